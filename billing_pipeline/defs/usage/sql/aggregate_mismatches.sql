-- usage_daily against the raw events, per organisation, metric and UTC day in [:start_date, :end_date).
-- Written by hand, apart from the dbt models, with the same validity rules as stg_events (a known
-- billable metric, a quantity sign the metric allows, properties a JSON object or absent).
WITH raw AS (
    SELECT e.organisation_id,
           e.metric,
           (e.occurred_at AT TIME ZONE 'UTC')::date AS usage_date,
           count(*)          AS event_count,
           sum(e.quantity)   AS quantity_sum,
           max(e.quantity)   AS quantity_max
    FROM billing.events AS e
    JOIN billing.billable_metrics AS m ON m.code = e.metric
    WHERE e.occurred_at >= CAST(:start_date AS date)::timestamp AT TIME ZONE 'UTC'
      AND e.occurred_at < CAST(:end_date AS date)::timestamp AT TIME ZONE 'UTC'
      AND (m.allow_negative OR e.quantity >= 0)
      AND (e.properties IS NULL OR jsonb_typeof(e.properties) = 'object')
    GROUP BY 1, 2, 3
),
agg AS (
    SELECT organisation_id,
           metric,
           usage_date,
           sum(event_count)   AS event_count,
           sum(quantity_sum)  AS quantity_sum,
           max(quantity_max)  AS quantity_max
    FROM usage.usage_daily
    WHERE usage_date >= CAST(:start_date AS date) AND usage_date < CAST(:end_date AS date)
    GROUP BY 1, 2, 3
)
SELECT coalesce(r.organisation_id, a.organisation_id) AS organisation_id,
       coalesce(r.metric, a.metric)                   AS metric,
       coalesce(r.usage_date, a.usage_date)           AS usage_date,
       r.event_count  AS raw_event_count,
       r.quantity_sum AS raw_quantity_sum,
       r.quantity_max AS raw_quantity_max,
       a.event_count  AS agg_event_count,
       a.quantity_sum AS agg_quantity_sum,
       a.quantity_max AS agg_quantity_max
FROM raw AS r
FULL JOIN agg AS a
  ON a.organisation_id = r.organisation_id AND a.metric = r.metric AND a.usage_date = r.usage_date
WHERE r.event_count IS DISTINCT FROM a.event_count
   OR r.quantity_sum IS DISTINCT FROM a.quantity_sum
   OR r.quantity_max IS DISTINCT FROM a.quantity_max
ORDER BY 3, 1, 2
