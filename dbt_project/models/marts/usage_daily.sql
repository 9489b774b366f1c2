{#-
  Daily pre-aggregates per organisation, project, metric and UTC day: serve count, sum and max.
  Incremental by one date column: each run replaces the days of its window [min_date, max_date)
  (strategy replace_window), so a rerun changes nothing and a month backfill in one run equals the
  same month built day by day.
-#}
{{ config(
    incremental_strategy='replace_window',
    window_column='usage_date',
    window_grain='day',
    indexes=[
        {'columns': ['usage_date', 'organisation_id', 'metric', 'project_id'], 'unique': True},
    ],
) }}

select
    organisation_id,
    project_id,
    metric,
    usage_date,
    count(*)::bigint as event_count,
    sum(quantity)::numeric(38, 12) as quantity_sum,
    max(quantity)::numeric(38, 12) as quantity_max,
    min(occurred_at) as first_occurred_at,
    max(occurred_at) as last_occurred_at
from {{ ref('stg_events') }}
where {{ usage_ts_filter('occurred_at') }}
group by organisation_id, project_id, metric, usage_date
