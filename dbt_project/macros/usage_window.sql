{#-
  The partition window Dagster passes as vars: min_date and max_date, ISO dates, half-open
  [min_date, max_date), in UTC. Without them (a full build or a full refresh) every day is built.
  Dates are parsed here and rendered back as literals, so nothing but a valid date reaches the SQL,
  and the predicates on occurred_at are constants the planner uses to prune event partitions.
-#}

{% macro usage_window() -%}
  {%- set lo = var('min_date', none) -%}
  {%- set hi = var('max_date', none) -%}
  {%- if lo is none and hi is none -%}
    {{ return(none) }}
  {%- endif -%}
  {%- if lo is none or hi is none -%}
    {{ exceptions.raise_compiler_error("usage window: pass both min_date and max_date, or neither") }}
  {%- endif -%}
  {%- set start = modules.datetime.date.fromisoformat(lo | string) -%}
  {%- set end = modules.datetime.date.fromisoformat(hi | string) -%}
  {%- if end <= start -%}
    {{ exceptions.raise_compiler_error("usage window: max_date " ~ end ~ " must be after min_date " ~ start) }}
  {%- endif -%}
  {{ return({'start': start, 'end': end}) }}
{%- endmacro %}


{#- The window widened to whole months: [first day of min_date's month, first day after max_date's month). -#}
{% macro usage_window_bounds(grain='day') -%}
  {%- set w = usage_window() -%}
  {%- if w is none -%}
    {{ return(none) }}
  {%- endif -%}
  {%- if grain == 'day' -%}
    {{ return(w) }}
  {%- elif grain == 'month' -%}
    {%- set last = w.end - modules.datetime.timedelta(days=1) -%}
    {%- set after = (last.replace(day=28) + modules.datetime.timedelta(days=4)).replace(day=1) -%}
    {{ return({'start': w.start.replace(day=1), 'end': after, 'last_month': last.replace(day=1)}) }}
  {%- else -%}
    {{ exceptions.raise_compiler_error("usage window: grain must be day or month, not " ~ grain) }}
  {%- endif -%}
{%- endmacro %}


{#- A date column inside the window; `true` without a window. -#}
{% macro usage_date_filter(column, grain='day') -%}
  {%- set b = usage_window_bounds(grain) -%}
  {%- if b is none -%}
    true
  {%- else -%}
    {{ column }} >= '{{ b.start.isoformat() }}'::date and {{ column }} < '{{ b.end.isoformat() }}'::date
  {%- endif -%}
{%- endmacro %}


{#- A timestamptz column inside the window (UTC day boundaries); `true` without a window. -#}
{% macro usage_ts_filter(column, grain='day') -%}
  {%- set b = usage_window_bounds(grain) -%}
  {%- if b is none -%}
    true
  {%- else -%}
    {{ column }} >= '{{ b.start.isoformat() }} 00:00:00+00'::timestamptz
    and {{ column }} < '{{ b.end.isoformat() }} 00:00:00+00'::timestamptz
  {%- endif -%}
{%- endmacro %}


{#- A date as the timestamptz of its UTC midnight. -#}
{% macro utc_midnight(date_expression) -%}
  ({{ date_expression }}::timestamp at time zone 'UTC')
{%- endmacro %}
