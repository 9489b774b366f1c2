-- Usage (dbt) bookkeeping for the late-event refresh.
--
-- usage.aggregated_days: when each UTC day of usage was last aggregated, and the visibility horizon
-- of that aggregation: every event committed before the aggregation read the events has an
-- ingested_at (its transaction's start time, the column default) before the horizon, so an event of
-- that day with ingested_at >= horizon may be missing from the aggregate: the day is stale.
CREATE TABLE usage.aggregated_days (
    usage_date     date PRIMARY KEY,
    horizon        timestamptz NOT NULL,
    aggregated_at  timestamptz NOT NULL DEFAULT now(),
    run_id         text,
    reason         text NOT NULL          -- partition | late_events | full_refresh
);

-- Late-event detection reads events by ingested_at: the BRIN index events_ingested_at (0003) serves it.
