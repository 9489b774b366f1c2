-- usage.usage_period is dbt's table (dbt_project/models/marts/usage_period.sql). A table built before
-- the model recorded, per row, the metric definition and the visibility horizon it was computed
-- under gains the two columns here, empty: a row without them is recomputed by the next run of its
-- month, never kept as it is.
ALTER TABLE IF EXISTS usage.usage_period ADD COLUMN IF NOT EXISTS metric_definition text;
ALTER TABLE IF EXISTS usage.usage_period ADD COLUMN IF NOT EXISTS computed_horizon timestamptz;
