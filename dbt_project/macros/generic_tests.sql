{#-
  The two generic tests this project needs, written here instead of pulling dbt_utils: dbt must not
  reach the network at run time (no `dbt deps`).
-#}

{% test unique_combination_of_columns(model, combination_of_columns) %}
select {{ combination_of_columns | join(', ') }}, count(*) as duplicates
from {{ model }}
group by {{ combination_of_columns | join(', ') }}
having count(*) > 1
{% endtest %}


{% test expression_is_true(model, expression) %}
select *
from {{ model }}
where not ({{ expression }})
{% endtest %}


{#-
  Data tests on the incremental models look at the run's window only: outside it nothing changed.
  A test opts in with `config: {where: "__usage_day_window__"}` (usage_date inside the window) or
  "__usage_month_window__" (period_start inside the window widened to months). This is dbt's
  documented hook for dynamic `where` configs; without a window (full build) the test sees everything.
-#}
{% macro get_where_subquery(relation) -%}
  {%- set where = config.get('where') -%}
  {%- if where -%}
    {%- if where == '__usage_day_window__' -%}
      {%- set where = usage_date_filter('usage_date', 'day') -%}
    {%- elif where == '__usage_month_window__' -%}
      {%- set where = usage_date_filter('period_start', 'month') -%}
    {%- endif -%}
    {%- set filtered -%}
      (select * from {{ relation }} where {{ where }}) dbt_subquery
    {%- endset -%}
    {%- do return(filtered) -%}
  {%- else -%}
    {%- do return(relation) -%}
  {%- endif -%}
{%- endmacro %}
