-- The month's usage per organisation and metric (the dbt model usage.usage_period), with the raw
-- event amounts, in order, where the organisation's plan prices the metric with the percentage model
-- (those charges look at each transaction, not only the total).
WITH percentage_charges AS (
    SELECT o.organisation_id, c.metric_code AS metric
    FROM billing.organisations o
    JOIN billing.plan_charges c ON c.plan_id = o.plan_id AND c.model = 'percentage'
    WHERE CAST(:organisation_id AS text) IS NULL OR o.organisation_id = CAST(:organisation_id AS text)
),
event_amounts AS (
    SELECT e.organisation_id, e.metric,
           array_agg(e.quantity ORDER BY e.occurred_at, e.event_id) AS event_amounts
    FROM billing.events e
    JOIN percentage_charges pc ON pc.organisation_id = e.organisation_id AND pc.metric = e.metric
    WHERE e.occurred_at >= :period_start_ts AND e.occurred_at < :period_end_ts
    GROUP BY e.organisation_id, e.metric
)
SELECT u.organisation_id, u.metric, u.units, a.event_amounts
FROM usage.usage_period u
LEFT JOIN event_amounts a ON a.organisation_id = u.organisation_id AND a.metric = u.metric
WHERE u.period_start = :period_start
  AND (CAST(:organisation_id AS text) IS NULL OR u.organisation_id = CAST(:organisation_id AS text))
