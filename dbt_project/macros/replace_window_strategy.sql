{#-
  incremental_strategy='replace_window': delete the target's rows whose `window_column` (one date
  column) is inside the run's window, then insert the new rows, in the incremental materialization's
  transaction. Unlike dbt's delete+insert on a unique_key, a day that has no rows any more is emptied
  too, so a rerun of a window always leaves exactly what the window's SQL selects (idempotent).
  `window_grain='month'` widens the window to whole months (usage_period). Without a window (vars
  absent) the whole table is replaced.
-#}
{% macro get_incremental_replace_window_sql(arg_dict) %}
  {%- set target = arg_dict["target_relation"] -%}
  {%- set source = arg_dict["temp_relation"] -%}
  {%- set column = config.get('window_column') -%}
  {%- if not column -%}
    {{ exceptions.raise_compiler_error("replace_window needs the model config window_column") }}
  {%- endif -%}
  {%- set columns = get_quoted_csv(arg_dict["dest_columns"] | map(attribute="name")) -%}
  delete from {{ target }}
  where {{ usage_date_filter(adapter.quote(column), config.get('window_grain', 'day')) }};

  insert into {{ target }} ({{ columns }})
  select {{ columns }} from {{ source }};
{% endmacro %}
