-- Late usage: events of a closed month (finalized before this one) ingested after the month closed
-- that no invoice line has billed yet (this month's drafts excluded: they are being replaced).
-- One row per organisation, metric and closed month, with:
--   units_billed, amount_billed(_minor)  what the month's invoice and earlier late lines billed for it;
--   units_total                  the month's units with these events: the metric's aggregation over
--                                all the month's raw events (count, sum, max, unique_count, latest);
--                                weighted_sum: units billed + each event's quantity held from its
--                                occurred_at to the month's end, over the month's length;
--   charge                       from the plan snapshot of the month's finalized invoice, or, when the
--                                organisation had no invoice that month, its current plan (NULL: the
--                                plan does not price the metric);
--   event_amounts                every event quantity of the month, in order, for percentage charges.
-- JSON comes back as text: the caller parses numbers as Decimal, never float.
WITH closed AS (
    SELECT period_start, closed_at,
           period_start::timestamp AT TIME ZONE 'UTC' AS start_ts,
           (period_start + interval '1 month')::timestamp AT TIME ZONE 'UTC' AS end_ts
    FROM billing.invoice_periods
    WHERE period_start < :period_start
),
replaced AS (
    SELECT invoice_id FROM billing.invoices WHERE period_start = :period_start AND status = 'draft'
),
late AS (
    SELECT e.organisation_id, e.metric, c.period_start, c.start_ts, c.end_ts,
           e.event_id, e.occurred_at, e.ingested_at, e.quantity
    FROM closed c
    CROSS JOIN LATERAL (
        SELECT ev.* FROM billing.events ev
        WHERE ev.occurred_at >= c.start_ts AND ev.occurred_at < c.end_ts AND ev.ingested_at > c.closed_at
          AND (CAST(:organisation_id AS text) IS NULL OR ev.organisation_id = CAST(:organisation_id AS text))
    ) e
    WHERE NOT EXISTS (
        SELECT 1 FROM billing.invoice_late_events le
        JOIN billing.invoice_lines l ON l.line_id = le.line_id
        JOIN billing.invoices i ON i.invoice_id = l.invoice_id
        WHERE le.event_id = e.event_id AND i.status <> 'void'
          AND i.invoice_id NOT IN (SELECT invoice_id FROM replaced))
),
groups AS (
    SELECT organisation_id, metric, period_start, start_ts, end_ts,
           jsonb_agg(jsonb_build_array(event_id, occurred_at, ingested_at, quantity::text)
                     ORDER BY occurred_at, event_id) AS events,
           sum(quantity * extract(epoch FROM end_ts - occurred_at) / extract(epoch FROM end_ts - start_ts))
               AS weighted_added
    FROM late
    GROUP BY organisation_id, metric, period_start, start_ts, end_ts
),
billed AS (
    SELECT i.organisation_id, l.metric, coalesce(l.original_period_start, i.period_start) AS period_start,
           sum(l.units) AS units, sum(l.amount_unrounded) AS amount, sum(l.amount_minor) AS amount_minor
    FROM billing.invoice_lines l
    JOIN billing.invoices i ON i.invoice_id = l.invoice_id
    JOIN groups g ON g.organisation_id = i.organisation_id AND g.metric = l.metric
                 AND g.period_start = coalesce(l.original_period_start, i.period_start)
    WHERE l.kind IN ('usage', 'late_usage') AND i.status <> 'void'
      AND i.invoice_id NOT IN (SELECT invoice_id FROM replaced)
    GROUP BY 1, 2, 3
)
SELECT g.organisation_id, g.metric, g.period_start AS original_period_start,
       CASE m.aggregation
           WHEN 'count' THEN month_now.event_count::numeric
           WHEN 'sum' THEN month_now.quantity_sum
           WHEN 'max' THEN month_now.quantity_max
           WHEN 'unique_count' THEN month_now.distinct_values::numeric
           WHEN 'latest' THEN month_now.latest
           WHEN 'weighted_sum' THEN coalesce(b.units, 0) + g.weighted_added
       END AS units_total,
       coalesce(b.units, 0) AS units_billed,
       coalesce(b.amount, 0) AS amount_billed,
       coalesce(b.amount_minor, 0) AS amount_billed_minor,
       g.events::text AS events,
       coalesce(inv.currency, o.currency) AS currency,
       inv.number AS original_invoice_number,
       CASE WHEN inv.invoice_id IS NOT NULL THEN snap.charge
            WHEN pc.metric_code IS NOT NULL THEN
                jsonb_build_object('metric', pc.metric_code, 'aggregation', m.aggregation,
                                   'field_name', m.field_name, 'model', pc.model, 'properties', pc.properties)
       END::text AS charge,
       month_now.event_amounts
FROM groups g
JOIN billing.organisations o ON o.organisation_id = g.organisation_id
JOIN billing.billable_metrics m ON m.code = g.metric
LEFT JOIN billed b
    ON b.organisation_id = g.organisation_id AND b.metric = g.metric AND b.period_start = g.period_start
LEFT JOIN billing.invoices inv
    ON inv.organisation_id = g.organisation_id AND inv.period_start = g.period_start AND inv.status = 'finalized'
LEFT JOIN LATERAL (
    SELECT ch AS charge FROM jsonb_array_elements(inv.plan_snapshot -> 'charges') ch WHERE ch ->> 'metric' = g.metric
) snap ON true
LEFT JOIN billing.plan_charges pc ON pc.plan_id = o.plan_id AND pc.metric_code = g.metric
CROSS JOIN LATERAL (  -- the whole month's events of the organisation and metric, late ones included
    SELECT count(*) AS event_count,
           sum(ev.quantity) AS quantity_sum,
           max(ev.quantity) AS quantity_max,
           count(DISTINCT ev.properties ->> m.field_name) AS distinct_values,
           (array_agg(ev.quantity ORDER BY ev.occurred_at DESC, ev.received_at DESC, ev.event_id DESC))[1] AS latest,
           array_agg(ev.quantity ORDER BY ev.occurred_at, ev.event_id) AS event_amounts
    FROM billing.events ev
    WHERE ev.organisation_id = g.organisation_id AND ev.metric = g.metric
      AND ev.occurred_at >= g.start_ts AND ev.occurred_at < g.end_ts
) month_now
ORDER BY g.organisation_id, g.period_start, g.metric
