-- usage_matches_events, part 1: the usage model (usage.usage_period) against the raw warehouse events
-- of the month, per organisation and metric: the event count for every aggregation, and the units
-- for count, sum, max, unique_count (distinct values of the metric's field) and latest (the last
-- event's quantity). weighted_sum units carry the level over from earlier months, so no month of raw
-- events alone recomputes them: its event count is compared, and a row with no event is expected.
WITH raw AS (
    SELECT e.organisation_id, e.metric,
           count(*) AS event_count,
           sum(e.quantity) AS quantity_sum,
           max(e.quantity) AS quantity_max,
           count(DISTINCT e.properties ->> m.field_name) FILTER (WHERE m.aggregation = 'unique_count')
               AS distinct_values,
           (array_agg(e.quantity ORDER BY e.occurred_at DESC, e.received_at DESC, e.event_id DESC)
               FILTER (WHERE m.aggregation = 'latest'))[1] AS latest
    FROM billing.events e
    JOIN billing.billable_metrics m ON m.code = e.metric
    WHERE e.occurred_at >= :period_start_ts AND e.occurred_at < :period_end_ts
    GROUP BY e.organisation_id, e.metric
),
modelled AS (
    SELECT organisation_id, metric, units, event_count
    FROM usage.usage_period
    WHERE period_start = :period_start
),
compared AS (
    SELECT coalesce(r.organisation_id, u.organisation_id) AS organisation_id,
           coalesce(r.metric, u.metric) AS metric,
           m.aggregation,
           coalesce(r.event_count, 0) AS raw_event_count,
           u.event_count AS usage_event_count,
           CASE m.aggregation
               WHEN 'count' THEN r.event_count::numeric
               WHEN 'sum' THEN r.quantity_sum
               WHEN 'max' THEN r.quantity_max
               WHEN 'unique_count' THEN r.distinct_values::numeric
               WHEN 'latest' THEN r.latest
           END AS raw_units,
           u.units AS usage_units
    FROM raw r
    FULL JOIN modelled u ON u.organisation_id = r.organisation_id AND u.metric = r.metric
    LEFT JOIN billing.billable_metrics m ON m.code = coalesce(r.metric, u.metric)
)
SELECT organisation_id, metric, aggregation, raw_event_count, usage_event_count, raw_units, usage_units,
       CASE WHEN usage_units IS NULL THEN 'raw events with no usage row'
            WHEN aggregation IS NULL THEN 'usage row for an unknown metric'
            WHEN raw_event_count <> usage_event_count THEN 'event count differs from the raw events'
            ELSE 'units differ from the raw events'
       END AS reason
FROM compared
WHERE usage_units IS NULL
   OR aggregation IS NULL
   OR raw_event_count IS DISTINCT FROM usage_event_count
   OR (aggregation <> 'weighted_sum' AND raw_units IS DISTINCT FROM usage_units)
ORDER BY organisation_id, metric
