-- Before observe_findings: the open or acknowledged findings of :source whose last day seen falls in
-- the days [:d0, :d1) being reconciled again, and which those days no longer show there (absent, or
-- only on earlier days), close as cleared with the first day they were gone (audited). A finding's
-- days are its own: reconciling later days never clears it (a charge of the 3rd stays missing until
-- the 3rd, reconciled again, no longer shows it).
WITH obs AS (
    SELECT kind, organisation_id, reference, max(recon_date) AS last_day
    FROM recon.discrepancies
    WHERE source = :source AND recon_date >= :d0 AND recon_date < :d1
    GROUP BY 1, 2, 3
),
gone AS (
    SELECT f.finding_id, f.status, COALESCE(o.last_day + 1, CAST(:d0 AS date)) AS cleared_on,
           greatest(f.first_seen, COALESCE(o.last_day, CAST(:d0 AS date) - 1)) AS last_seen
    FROM recon.findings f
    LEFT JOIN obs o ON o.kind = f.kind AND COALESCE(o.organisation_id, '') = COALESCE(f.organisation_id, '')
                   AND COALESCE(o.reference, '') = COALESCE(f.reference, '')
    WHERE f.source = :source AND f.status IN ('open', 'acknowledged')
      AND f.last_seen >= :d0 AND f.last_seen < :d1
      AND (o.last_day IS NULL OR o.last_day < f.last_seen)
),
cleared AS (
    UPDATE recon.findings f
    SET status = 'cleared', cleared_on = g.cleared_on, last_seen = g.last_seen,
        status_note = format('cleared by data on %s', g.cleared_on), status_changed_at = now()
    FROM gone g
    WHERE f.finding_id = g.finding_id
    RETURNING f.finding_id, g.status AS from_state, g.cleared_on
)
INSERT INTO billing.audit_log (entity_type, entity_id, action, from_state, to_state, actor, detail)
SELECT 'recon_finding', finding_id::text, 'cleared', from_state, 'cleared', :actor,
       jsonb_build_object('note', format('cleared by data on %s', cleared_on))
FROM cleared
