-- Every day of [:start_date, :end_date) was aggregated by a run that read events visible at :horizon.
INSERT INTO usage.aggregated_days (usage_date, horizon, aggregated_at, run_id, reason)
SELECT d::date, :horizon, now(), :run_id, :reason
FROM generate_series(CAST(:start_date AS date), CAST(:end_date AS date) - 1, interval '1 day') AS d
ON CONFLICT (usage_date) DO UPDATE
SET horizon = excluded.horizon,
    aggregated_at = excluded.aggregated_at,
    run_id = excluded.run_id,
    reason = excluded.reason
