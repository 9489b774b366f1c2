{#-
  Usage per organisation, billable metric and calendar month (UTC), for every aggregation type,
  following Lago's documented semantics (docs.getlago.com, "Aggregation types"; lago-api
  app/services/billable_metrics/aggregations/*.rb and events/stores/postgres/weighted_sum_query.rb):

    count         number of events                       from usage_daily
    sum           sum of quantity                        from usage_daily
    max           largest quantity                       from usage_daily
    unique_count  distinct non-null values of properties ->> field_name, over the month's raw events
    latest        quantity of the month's last event (by occurred_at), over raw events
    weighted_sum  time-weighted level over the month: each event's quantity changes the level; the
                  level is held until the next event or the period end, and
                  units = sum(level * seconds held) / seconds in the month. As in Lago's recurring
                  weighted_sum, the level carries over: the month starts at the sum of every earlier
                  change (from raw events, so a late event in an earlier month is never missed).

  weighted_sum's opening level, exactly that sum without reading all history: a run with a window on
  the built table takes the level before its first month from the previous month's row P (its
  closing_level; no row: level 0, since a run writes a row whenever the level or the month's events
  are not 0, and replaces whole months). P's closing level is the sum of every change before the
  window that its computation saw, and it saw every event ingested before its computed_horizon. So
  the carry is the full sum when, for that organisation and metric:
    - the previous month has rows of the metric under its current definition, each with a horizon
      (a month's rows are written by its last run under one definition; without such rows: the
      first month built, a gap, a changed definition, a run without horizon, the full sum);
    - no event before the window was ingested at or after P's horizon (for an organisation without
      a row: the smallest horizon of the metric's rows in that month, a conservative bound on the
      last run's); those events are few and found through the BRIN index on ingested_at;
    - no event before the window was deleted at or after that horizon (events are never updated;
      an operator may delete some, sql/0006_event_ids.sql, and each DELETE is logged per
      organisation and metric with its time by a trigger, sql/0092_event_deletions.sql; a TRUNCATE
      of the events stops every carry). A deletion is seen whether or not its month was rerun;
      the months between keep their old level until they are run again.
  The organisations and metrics that fail these checks are summed from every earlier change, and
  only those (a full pass over the earlier months' events, skipped when there are none). A full
  build (no window), or a window on a table not built yet, sums every change as before.

  Incremental: a run replaces the whole months its window [min_date, max_date) touches
  (replace_window on period_start, month grain). unique_count, latest and weighted_sum need a pass
  over the month's raw events; a run whose window lies in one month (a day's partition, a late-event
  refresh) keeps the rows of these aggregations that are unchanged, and passes over the events of
  the others' metrics only (of their organisations too, when they are few), or not at all.

  A row is unchanged, so that computing it again would give the same value, when no event of its
  organisation, metric and month was ingested at or after the visibility horizon it was computed
  under (computed_horizon: every event ingested before it was visible to that computation; events
  are never updated, sql/0006_event_ids.sql), its metric definition is the same, its event_count
  equals usage_daily's (a rerun after an operator deleted events) and, for weighted_sum, its opening
  level is the same (a late or deleted event in an earlier month).
  The horizon comes from the Dagster asset (var usage_horizon, taken before dbt starts); a row
  computed without one is never kept.

  The planner cannot know how many rows changed (a late-event refresh: a few; a day's partition:
  nearly all), and a sort of the month's events would cost twice a hash: the model's transaction
  turns sorts off (pre_hook), so its aggregates hash whatever the estimates.
-#}
{{ config(
    incremental_strategy='replace_window',
    window_column='period_start',
    window_grain='month',
    pre_hook="set local enable_sort = off",
    indexes=[
        {'columns': ['period_start', 'organisation_id', 'metric'], 'unique': True},
    ],
) }}
{%- set window = usage_window_bounds('month') %}
{%- set one_month = window is not none and window.start == window.last_month %}
{%- set keep_unchanged = is_incremental() and one_month %}
{%- set raw_aggregations = "('unique_count', 'latest', 'weighted_sum')" %}
{%- set horizon = var('usage_horizon', none) %}
{#- a window on the built table: weighted_sum carries its level from the month before the window #}
{%- set carry = window is not none and is_incremental() %}
{%- if carry %}
{%- set previous_month = (window.start - modules.datetime.timedelta(days=1)).replace(day=1) %}
{%- endif %}

with metrics as (
    select
        metric,
        aggregation,
        field_name,
        -- what a row's value depends on in the metric's definition (kept in metric_definition)
        aggregation || coalesce('(' || field_name || ')', '')
            || case when allow_negative then ', negative quantities allowed' else '' end as definition
    from {{ ref('stg_billable_metrics') }}
),

months as (
{%- if window %}
    select m::date as period_start, (m + interval '1 month')::date as period_end
    from generate_series(
        '{{ window.start.isoformat() }}'::timestamp,
        '{{ window.last_month.isoformat() }}'::timestamp,
        interval '1 month'
    ) as m
{%- else %}
    -- full build: every month from the first to the last day that has usage
    select m::date as period_start, (m + interval '1 month')::date as period_end
    from (
        select min(d) as first_day, max(d) as last_day
        from (
            select usage_date as d from {{ ref('usage_daily') }}
            union all
            select usage_date from {{ ref('stg_events') }}
        ) as days
    ) as bounds
    cross join lateral generate_series(
        date_trunc('month', bounds.first_day), date_trunc('month', bounds.last_day), interval '1 month'
    ) as m
    where bounds.first_day is not null
{%- endif %}
),

-- count, sum and max: from the daily pre-aggregates
daily as materialized (
    select
        d.organisation_id,
        d.metric,
        date_trunc('month', d.usage_date)::date as period_start,
        sum(d.event_count)::bigint as event_count,
        sum(d.quantity_sum) as quantity_sum,
        max(d.quantity_max) as quantity_max
    from {{ ref('usage_daily') }} as d
    where {{ usage_date_filter('d.usage_date', 'month') }}
    group by 1, 2, 3
),

{%- if carry %}
-- weighted_sum: the level before the window, carried from the previous month's rows (see above).
-- The previous month's weighted_sum rows under their metric's current definition.
ws_previous as materialized (
    select p.organisation_id, p.metric, p.closing_level, p.computed_horizon
    from {{ this }} as p
    inner join metrics as mt
        on mt.metric = p.metric and mt.aggregation = 'weighted_sum' and mt.definition = p.metric_definition
    where p.period_start = '{{ previous_month.isoformat() }}'::date
),

-- The metrics that month carries: it has rows of theirs under their current definition (the month's
-- last run wrote or kept every row of it, under one definition), each with a horizon. Their smallest
-- horizon is the horizon of the organisations without a row: level 0 when the month was built.
ws_carried_metrics as materialized (
    select metric, min(computed_horizon) as horizon
    from ws_previous
    group by metric
    having bool_and(computed_horizon is not null)
        -- billing.events truncated since: nothing is carried
        and not exists (
            select 1 from billing.event_deletions as d
            where d.organisation_id is null and d.deleted_at >= min(computed_horizon)
        )
),

-- Organisations and metrics with a change before the window made at or after that horizon, which the
-- carried level may miss or still count: an event ingested (few, found through the BRIN index on
-- ingested_at) or deleted (an operator's act, logged per statement by a trigger on billing.events,
-- sql/0092_event_deletions.sql, found through its index on deleted_at). Summed again from every
-- earlier change.
ws_recount as materialized (
    select distinct x.organisation_id, x.metric
    from (
        select e.organisation_id, e.metric, e.ingested_at as changed_at
        from {{ ref('stg_events') }} as e
        where e.occurred_at < '{{ window.start.isoformat() }} 00:00:00+00'::timestamptz
            and e.ingested_at >= (select min(horizon) from ws_carried_metrics)
        union all
        select d.organisation_id, d.metric, d.deleted_at
        from billing.event_deletions as d
        where d.first_occurred_at < '{{ window.start.isoformat() }} 00:00:00+00'::timestamptz
            and d.deleted_at >= (select min(horizon) from ws_carried_metrics)
    ) as x
    inner join ws_carried_metrics as c on c.metric = x.metric
    left join ws_previous as p on p.organisation_id = x.organisation_id and p.metric = x.metric
    where x.changed_at >= coalesce(p.computed_horizon, c.horizon)
),

ws_prior as materialized (
    select p.organisation_id, p.metric, p.closing_level as level
    from ws_previous as p
    inner join ws_carried_metrics as c on c.metric = p.metric
    where not exists (
        select 1 from ws_recount as r where r.organisation_id = p.organisation_id and r.metric = p.metric
    )
    union all
    -- the full sum, for the metrics not carried and the organisations and metrics recounted only;
    -- without any, no pass over the events at all (evaluated once)
    select e.organisation_id, e.metric, sum(e.quantity) as level
    from {{ ref('stg_events') }} as e
    inner join metrics as mt on mt.metric = e.metric and mt.aggregation = 'weighted_sum'
    where e.occurred_at < '{{ window.start.isoformat() }} 00:00:00+00'::timestamptz
        and (
            exists (select 1 from ws_recount)
            or exists (
                select 1 from metrics as m
                where m.aggregation = 'weighted_sum' and m.metric not in (select metric from ws_carried_metrics)
            )
        )
        and (
            e.metric <> all(array(select metric from ws_carried_metrics))
            or (e.organisation_id, e.metric) in (select organisation_id, metric from ws_recount)
        )
    group by e.organisation_id, e.metric
),
{%- else %}
-- weighted_sum: the level before the first month built is the sum of every earlier change
ws_prior as materialized (
    select e.organisation_id, e.metric, sum(e.quantity) as level
    from {{ ref('stg_events') }} as e
    inner join metrics as mt on mt.metric = e.metric and mt.aggregation = 'weighted_sum'
{%- if window %}
    where e.occurred_at < '{{ window.start.isoformat() }} 00:00:00+00'::timestamptz
{%- else %}
    where e.occurred_at < (select {{ utc_midnight('min(period_start)') }} from months)
{%- endif %}
    group by e.organisation_id, e.metric
),
{%- endif %}

{%- if keep_unchanged %}
-- The month's organisations and metrics with events ingested at or after the oldest horizon of the
-- month's rows (few, and found through the BRIN index on ingested_at), with their last such event
fresh as materialized (
    select e.organisation_id, e.metric, max(e.ingested_at) as last_ingested_at
    from {{ ref('stg_events') }} as e
    where {{ usage_ts_filter('e.occurred_at', 'month') }}
        and e.ingested_at >= (
            select min(p.computed_horizon) from {{ this }} as p
            where p.period_start = '{{ window.start.isoformat() }}'::date
        )
    group by e.organisation_id, e.metric
),
{%- endif %}

-- The rows of the month whose unique_count, latest or weighted_sum value this run keeps (see above)
kept as materialized (
{%- if keep_unchanged %}
    select p.organisation_id, p.metric, p.period_start, p.units, p.opening_level, p.closing_level,
        p.computed_horizon
    from {{ this }} as p
    inner join metrics as mt
        on mt.metric = p.metric and mt.definition = p.metric_definition
        and mt.aggregation in {{ raw_aggregations }}
    left join daily as d
        on d.organisation_id = p.organisation_id and d.metric = p.metric and d.period_start = p.period_start
    left join ws_prior as w on w.organisation_id = p.organisation_id and w.metric = p.metric
    where p.period_start = '{{ window.start.isoformat() }}'::date
        and p.computed_horizon is not null
        and not exists (
            select 1 from fresh as f
            where f.organisation_id = p.organisation_id and f.metric = p.metric
                and f.last_ingested_at >= p.computed_horizon
        )
        and p.event_count = coalesce(d.event_count, 0)
        and (mt.aggregation <> 'weighted_sum' or p.opening_level = coalesce(w.level, 0))
{%- else %}
    select
        null::text as organisation_id,
        null::text as metric,
        null::date as period_start,
        null::numeric as units,
        null::numeric as opening_level,
        null::numeric as closing_level,
        null::timestamptz as computed_horizon
    where false
{%- endif %}
),

-- The month's rows of these aggregations that changed (with usage, or with events usage_daily has
-- not counted yet): if there is none, no raw pass
changed as materialized (
    select c.organisation_id, c.metric
    from (
        select organisation_id, metric from daily
{%- if keep_unchanged %}
        union
        select organisation_id, metric from fresh
{%- endif %}
    ) as c
    inner join metrics as mt on mt.metric = c.metric and mt.aggregation in {{ raw_aggregations }}
    where not exists (select 1 from kept as k where k.organisation_id = c.organisation_id and k.metric = c.metric)
),

-- unique_count, latest and weighted_sum: one pass over the months' raw events of those metrics,
-- hash aggregates only (no sort of the month's events). The inner grouping keeps one row per distinct
-- property value of unique_count metrics. weighted_sum needs the sum, over the month's changes, of
-- change x seconds from the change to the period end (see `weighted` below): that is
-- end x (sum of changes) - sum of (change x its epoch), so each event only adds change x its epoch
-- (exact numerics) and the period end enters once per group. Per event nothing else is computed:
-- a window of one month is a constant period_start.
raw_groups as (
    select
        e.organisation_id,
        e.metric,
{%- if one_month %}
        '{{ window.start.isoformat() }}'::date as period_start,
{%- else %}
        date_trunc('month', e.occurred_at at time zone 'UTC')::date as period_start,
{%- endif %}
        case when mt.aggregation = 'unique_count' then e.properties ->> mt.field_name end as unique_value,
        sum(e.quantity * extract(epoch from e.occurred_at))
            filter (where mt.aggregation = 'weighted_sum') as ws_moment,
        sum(e.quantity) filter (where mt.aggregation = 'weighted_sum') as ws_delta,
        count(*) filter (where mt.aggregation = 'weighted_sum') as ws_events,
        max(e.occurred_at) filter (where mt.aggregation = 'latest') as latest_at
    from {{ ref('stg_events') }} as e
    inner join metrics as mt
        on mt.metric = e.metric and mt.aggregation in {{ raw_aggregations }}
    where {{ usage_ts_filter('e.occurred_at', 'month') }}
{%- if keep_unchanged %}
        -- evaluated once each: without a changed row no pass at all, else only the events of the
        -- metrics with one, and of their organisations when they are few (a late-event refresh)
        and exists (select 1 from changed)
        and e.metric = any(array(select distinct metric from changed))
        and (
            (select count(distinct organisation_id) > 16 from changed)
            or e.organisation_id = any(array(select distinct organisation_id from changed))
        )
{%- endif %}
    group by 1, 2, 3, 4
),

raw_period as materialized (
    select
        organisation_id,
        metric,
        period_start,
        count(unique_value) as unique_values,   -- distinct non-null values (one row each above)
        sum(ws_delta) * extract(epoch from {{ utc_midnight("(period_start + interval '1 month')") }})
            - sum(ws_moment) as ws_area,
        sum(ws_delta) as ws_delta,
        sum(ws_events) as ws_events,
        max(latest_at) as latest_at
    from raw_groups
    group by organisation_id, metric, period_start
),

-- latest: the quantity of the month's last event; equal occurred_at broken by the later received_at,
-- then the greater event_id (a look-up by the events' occurred_at index)
latest as (
    select distinct on (r.organisation_id, r.metric, r.period_start)
        r.organisation_id,
        r.metric,
        r.period_start,
        e.quantity as units
    from raw_period as r
    inner join {{ ref('stg_events') }} as e
        on e.organisation_id = r.organisation_id and e.metric = r.metric and e.occurred_at = r.latest_at
    where r.latest_at is not null
    order by r.organisation_id, r.metric, r.period_start, e.received_at desc, e.event_id desc
),

ws_grid as (
    select
        k.organisation_id,
        k.metric,
        m.period_start,
        m.period_end,
        coalesce(p.level, 0) + coalesce(sum(coalesce(r.ws_delta, 0)) over (
            partition by k.organisation_id, k.metric
            order by m.period_start
            rows between unbounded preceding and 1 preceding
        ), 0) as opening_level,
        coalesce(r.ws_delta, 0) as delta,
        coalesce(r.ws_area, 0) as area,
        coalesce(r.ws_events, 0) as events
    from (
        select organisation_id, metric from ws_prior
        union
        select r.organisation_id, r.metric from raw_period as r where r.ws_events > 0
    ) as k
    cross join months as m
    left join ws_prior as p on p.organisation_id = k.organisation_id and p.metric = k.metric
    left join raw_period as r
        on r.organisation_id = k.organisation_id and r.metric = k.metric and r.period_start = m.period_start
    -- weighted_sum rows kept as they are need no level
    where not exists (select 1 from kept where kept.organisation_id = k.organisation_id and kept.metric = k.metric)
),

-- Lago's query sums, over the segments between changes, level x seconds held / seconds in the
-- period, the opening level entering as a change at the period start. The level at t is
-- opening + the changes at or before t, so that sum is (opening x T + sum of change x seconds from
-- the change to the period end) / T, with T the seconds in the period: the same number, with no
-- ordering of the events.
weighted as materialized (
    select
        organisation_id,
        metric,
        period_start,
        (opening_level * extract(epoch from {{ utc_midnight('period_end') }} - {{ utc_midnight('period_start') }}) + area)
            / extract(epoch from {{ utc_midnight('period_end') }} - {{ utc_midnight('period_start') }}) as units,
        opening_level,
        opening_level + delta as closing_level
    from ws_grid
    where opening_level <> 0 or events > 0
),

period_keys as (
    select organisation_id, metric, period_start from daily
    union
    select organisation_id, metric, period_start from weighted
    union
    select organisation_id, metric, period_start from kept
)

select
    k.organisation_id::text as organisation_id,
    k.metric::text as metric,
    mt.aggregation::text as aggregation,
    k.period_start::date as period_start,
    m.period_end::date as period_end,
    round(case mt.aggregation
        when 'count' then coalesce(d.event_count, 0)
        when 'sum' then coalesce(d.quantity_sum, 0)
        when 'max' then d.quantity_max
        when 'unique_count' then coalesce(kp.units, r.unique_values, 0)
        when 'latest' then coalesce(kp.units, l.units)
        when 'weighted_sum' then coalesce(kp.units, w.units, 0)
    end, 12)::numeric(38, 12) as units,
    coalesce(d.event_count, 0)::bigint as event_count,
    round(coalesce(kp.opening_level, w.opening_level), 12)::numeric(38, 12) as opening_level,
    round(coalesce(kp.closing_level, w.closing_level), 12)::numeric(38, 12) as closing_level,
    mt.definition::text as metric_definition,
    -- rows of unique_count, latest and weighted_sum only (the others always come from usage_daily);
    -- a kept row keeps the horizon its values were computed under
    case
        when kp.organisation_id is not null then kp.computed_horizon
{%- if horizon %}
        when mt.aggregation in {{ raw_aggregations }}
            then '{{ modules.datetime.datetime.fromisoformat(horizon | string).isoformat() }}'::timestamptz
{%- endif %}
    end as computed_horizon
from period_keys as k
inner join metrics as mt on mt.metric = k.metric
inner join months as m on m.period_start = k.period_start
left join daily as d
    on d.organisation_id = k.organisation_id and d.metric = k.metric and d.period_start = k.period_start
left join raw_period as r
    on r.organisation_id = k.organisation_id and r.metric = k.metric and r.period_start = k.period_start
left join latest as l
    on l.organisation_id = k.organisation_id and l.metric = k.metric and l.period_start = k.period_start
left join weighted as w
    on w.organisation_id = k.organisation_id and w.metric = k.metric and w.period_start = k.period_start
left join kept as kp
    on kp.organisation_id = k.organisation_id and kp.metric = k.metric and kp.period_start = k.period_start
