-- Counts and quantity sums per organisation, project, metric and hour of the day, edge against
-- warehouse (events plus quarantine). Quantities that are not plain decimals count but add nothing.
-- Quarantined rows are taken and bucketed as the edge side is, by their raw received_at text: the
-- edge selected the day by that text, and a row quarantined for its received_at has no parsed one.
WITH edge AS (
    SELECT organisation_id, project_id, metric, substr(received_at, 1, 13) AS hour,
        count(*) AS n,
        sum(CASE WHEN quantity ~ '^[+-]?\d{1,26}(\.\d{1,12})?$' THEN quantity::numeric END) AS quantity
    FROM edge_stage GROUP BY 1, 2, 3, 4
),
warehouse AS (
    SELECT organisation_id, project_id, metric, hour, sum(n)::bigint AS n, sum(quantity) AS quantity
    FROM (
        SELECT organisation_id, project_id, metric,
            to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24') AS hour, count(*) AS n,
            sum(quantity) AS quantity
        FROM billing.events
        WHERE received_at >= CAST(:day_start AS timestamptz) AND received_at < CAST(:day_end AS timestamptz)
        GROUP BY 1, 2, 3, 4
        UNION ALL
        SELECT raw ->> 'organisation_id', raw ->> 'project_id', raw ->> 'metric',
            substr(raw ->> 'received_at', 1, 13), count(*),
            sum(CASE WHEN raw ->> 'quantity' ~ '^[+-]?\d{1,26}(\.\d{1,12})?$' THEN (raw ->> 'quantity')::numeric END)
        FROM billing.quarantined_events
        -- a parsed received_at is in UTC (the shape check asks for Z or +00), so its day is its text's
        WHERE ((received_at >= CAST(:day_start AS timestamptz) AND received_at < CAST(:day_end AS timestamptz))
               OR received_at IS NULL)
          AND raw ->> 'received_at' >= to_char(CAST(:day_start AS timestamptz) AT TIME ZONE 'UTC', 'YYYY-MM-DD')
          AND raw ->> 'received_at' < to_char(CAST(:day_end AS timestamptz) AT TIME ZONE 'UTC', 'YYYY-MM-DD')
        GROUP BY 1, 2, 3, 4
    ) w
    GROUP BY 1, 2, 3, 4
)
SELECT coalesce(e.organisation_id, w.organisation_id) AS organisation_id,
    coalesce(e.project_id, w.project_id) AS project_id, coalesce(e.metric, w.metric) AS metric,
    coalesce(e.hour, w.hour) AS hour,
    coalesce(e.n, 0) AS edge_count, coalesce(w.n, 0) AS warehouse_count,
    coalesce(e.quantity, 0) AS edge_quantity, coalesce(w.quantity, 0) AS warehouse_quantity
FROM edge e
FULL JOIN warehouse w USING (organisation_id, project_id, metric, hour)
WHERE e.n IS NULL OR w.n IS NULL OR e.n <> w.n OR coalesce(e.quantity, 0) <> coalesce(w.quantity, 0)
ORDER BY abs(coalesce(e.n, 0) - coalesce(w.n, 0)) DESC, 1, 2, 3, 4
