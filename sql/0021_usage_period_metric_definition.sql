-- usage.usage_period is dbt's table (dbt_project/models/marts/usage_period.sql); a table built before
-- the model recorded each row's metric definition gains the column here, empty: a row without it is
-- recomputed by the next run of its month, never kept as it is.
ALTER TABLE IF EXISTS usage.usage_period ADD COLUMN IF NOT EXISTS metric_definition text;
