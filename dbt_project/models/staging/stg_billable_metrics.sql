-- The catalog's billable metrics, renamed for joining events (events.metric = metric).
select
    code::text as metric,
    name::text as metric_name,
    aggregation::text as aggregation,
    field_name::text as field_name,
    allow_negative
from {{ source('billing', 'billable_metrics') }}
