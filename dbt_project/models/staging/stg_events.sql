-- Warehouse events, typed, valid rows only: the metric is a billable metric, the quantity's sign is
-- allowed for it, and properties is a JSON object (or absent). usage_date is the UTC calendar day of
-- occurred_at: usage partitions by it. Filters on occurred_at pass through this view to the
-- partitioned events table, so a day's query reads one monthly partition. It reads the metrics'
-- source table, not stg_billable_metrics: a view on a view is dropped with it (CASCADE) each time
-- dbt replaces the other view.
select
    e.event_id,
    e.organisation_id,
    e.project_id,
    e.metric,
    e.quantity::numeric(38, 12) as quantity,
    e.properties,
    e.occurred_at,
    (e.occurred_at at time zone 'UTC')::date as usage_date,
    e.received_at,
    e.ingested_at
from {{ source('billing', 'events') }} as e
where (e.properties is null or jsonb_typeof(e.properties) = 'object')
    and exists (
        select 1
        from {{ source('billing', 'billable_metrics') }} as m
        where m.code = e.metric
            and (m.allow_negative or e.quantity >= 0)
    )
