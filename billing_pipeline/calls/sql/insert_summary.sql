-- One recon.call_reconciliation row per day of the window (the caller deleted the window's rows).
-- A provider call "arrived by webhook" when its end-of-call report reached the inbox or was applied.
WITH days AS (
    SELECT CAST(d AS date) AS recon_date
    FROM generate_series(CAST(:start_day AS date), CAST(:end_day AS date) - 1, interval '1 day') AS d
),
provider AS (
    SELECT (v.created_at AT TIME ZONE 'UTC')::date AS recon_date,
           count(*) AS provider_calls,
           count(*) FILTER (WHERE c.webhook_received_at IS NOT NULL OR i.inbox_id IS NOT NULL) AS webhook_calls
    FROM billing.vapi_calls v
    LEFT JOIN billing.calls c USING (call_id)
    LEFT JOIN billing.webhook_inbox i ON i.provider = 'vapi' AND i.event_id = 'end-of-call-report:' || v.call_id
    WHERE v.created_at >= :start AND v.created_at < :end AND v.status = 'ended'
    GROUP BY 1
),
ours AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS recon_date,
           count(*) FILTER (WHERE reconciled) AS recovered_calls,
           COALESCE(sum(charged_minor) FILTER (WHERE reconciled AND charge_status = 'charged'), 0) AS recovered_revenue_minor,
           count(*) FILTER (WHERE charge_status = 'refused') AS refused_calls,
           count(*) FILTER (WHERE charge_status = 'unattributed') AS unattributed_calls
    FROM billing.calls
    WHERE created_at >= :start AND created_at < :end
    GROUP BY 1
),
found AS (
    SELECT recon_date,
           count(*) FILTER (WHERE kind = 'amount_mismatch') AS amount_mismatches,
           count(*) FILTER (WHERE kind = 'missing_at_provider') AS missing_at_provider
    FROM recon.discrepancies
    WHERE source = 'call_reconciliation' AND recon_date >= :start_day AND recon_date < :end_day
    GROUP BY 1
)
INSERT INTO recon.call_reconciliation (recon_date, provider_calls, webhook_calls, webhook_reliability,
    recovered_calls, recovered_revenue_minor, amount_mismatches, missing_at_provider, refused_calls,
    unattributed_calls)
SELECT d.recon_date,
       COALESCE(p.provider_calls, 0),
       COALESCE(p.webhook_calls, 0),
       round(p.webhook_calls::numeric / NULLIF(p.provider_calls, 0), 6),
       COALESCE(o.recovered_calls, 0),
       COALESCE(o.recovered_revenue_minor, 0),
       COALESCE(f.amount_mismatches, 0),
       COALESCE(f.missing_at_provider, 0),
       COALESCE(o.refused_calls, 0),
       COALESCE(o.unattributed_calls, 0)
FROM days d
LEFT JOIN provider p USING (recon_date)
LEFT JOIN ours o USING (recon_date)
LEFT JOIN found f USING (recon_date)
RETURNING *
