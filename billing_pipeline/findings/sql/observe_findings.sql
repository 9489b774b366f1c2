-- The days [:d0, :d1) of one reconciliation (:source) folded into recon.findings, set-based: each
-- distinct (kind, organisation, reference) observed is inserted or updated (first/last day seen, the
-- latest amounts and detail); a resolved or cleared finding seen on a day after its last one reopens
-- (audited). Runs after the source has replaced its recon.discrepancies rows for those days.
WITH obs AS (
    SELECT DISTINCT ON (kind, organisation_id, reference)
           kind, organisation_id, reference, provider, currency, internal_amount_minor, provider_amount_minor,
           detail, min(recon_date) OVER w AS first_day, max(recon_date) OVER w AS last_day
    FROM recon.discrepancies
    WHERE source = :source AND recon_date >= :d0 AND recon_date < :d1
    WINDOW w AS (PARTITION BY kind, organisation_id, reference)
    ORDER BY kind, organisation_id, reference, recon_date DESC, discrepancy_id DESC
),
reopen AS (
    SELECT f.finding_id, f.status, o.last_day
    FROM recon.findings f
    JOIN obs o ON o.kind = f.kind AND COALESCE(o.organisation_id, '') = COALESCE(f.organisation_id, '')
              AND COALESCE(o.reference, '') = COALESCE(f.reference, '')
    WHERE f.source = :source AND f.status IN ('resolved', 'cleared') AND o.last_day > f.last_seen
),
upserted AS (
    INSERT INTO recon.findings AS f (source, kind, organisation_id, reference, provider, currency,
                                     internal_amount_minor, provider_amount_minor, detail, first_seen, last_seen)
    SELECT CAST(:source AS text), kind, organisation_id, reference, provider, currency, internal_amount_minor,
           provider_amount_minor, detail, first_day, last_day
    FROM obs
    ON CONFLICT (source, kind, organisation_id, reference) DO UPDATE SET
        first_seen = least(f.first_seen, EXCLUDED.first_seen),
        last_seen = greatest(f.last_seen, EXCLUDED.last_seen),
        provider = CASE WHEN EXCLUDED.last_seen >= f.last_seen THEN EXCLUDED.provider ELSE f.provider END,
        currency = CASE WHEN EXCLUDED.last_seen >= f.last_seen THEN EXCLUDED.currency ELSE f.currency END,
        internal_amount_minor = CASE WHEN EXCLUDED.last_seen >= f.last_seen
                                     THEN EXCLUDED.internal_amount_minor ELSE f.internal_amount_minor END,
        provider_amount_minor = CASE WHEN EXCLUDED.last_seen >= f.last_seen
                                     THEN EXCLUDED.provider_amount_minor ELSE f.provider_amount_minor END,
        detail = CASE WHEN EXCLUDED.last_seen >= f.last_seen THEN EXCLUDED.detail ELSE f.detail END,
        status = CASE WHEN f.status IN ('resolved', 'cleared') AND EXCLUDED.last_seen > f.last_seen
                      THEN 'open' ELSE f.status END,
        cleared_on = CASE WHEN f.status IN ('resolved', 'cleared') AND EXCLUDED.last_seen > f.last_seen
                          THEN NULL ELSE f.cleared_on END,
        times_reopened = f.times_reopened
                         + CASE WHEN f.status IN ('resolved', 'cleared') AND EXCLUDED.last_seen > f.last_seen
                                THEN 1 ELSE 0 END,
        status_note = CASE WHEN f.status IN ('resolved', 'cleared') AND EXCLUDED.last_seen > f.last_seen
                           THEN format('seen again on %s', EXCLUDED.last_seen) ELSE f.status_note END,
        status_changed_at = CASE WHEN f.status IN ('resolved', 'cleared') AND EXCLUDED.last_seen > f.last_seen
                                 THEN now() ELSE f.status_changed_at END
    RETURNING 1
),
audited AS (
    INSERT INTO billing.audit_log (entity_type, entity_id, action, from_state, to_state, actor, detail)
    SELECT 'recon_finding', finding_id::text, 'reopened', status, 'open', :actor,
           jsonb_build_object('note', format('seen again on %s', last_day))
    FROM reopen
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted) AS observed, (SELECT count(*) FROM audited) AS reopened
