-- Days already aggregated that have events ingested at or after that aggregation's horizon, among
-- the events ingested since :scan_from (the BRIN index on ingested_at keeps this a short scan).
SELECT
    a.usage_date,
    count(*)            AS late_events,
    count(*) FILTER (WHERE m.aggregation = 'weighted_sum') AS late_weighted_events,
    min(e.ingested_at)  AS first_ingested_at,
    max(e.ingested_at)  AS last_ingested_at,
    a.aggregated_at,
    a.horizon,
    a.run_id            AS aggregated_by_run
FROM billing.events AS e
JOIN usage.aggregated_days AS a
  ON a.usage_date = (e.occurred_at AT TIME ZONE 'UTC')::date
LEFT JOIN billing.billable_metrics AS m ON m.code = e.metric
WHERE e.ingested_at >= :scan_from
  AND e.ingested_at >= a.horizon
GROUP BY a.usage_date, a.aggregated_at, a.horizon, a.run_id
ORDER BY a.usage_date
