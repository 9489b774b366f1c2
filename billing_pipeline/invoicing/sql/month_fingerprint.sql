-- The month's raw events: how many, and their total quantity. A draft build records it; finalization
-- recounts under the mover's lock and refuses a build whose month changed since.
SELECT count(*) AS event_count, coalesce(sum(quantity), 0) AS quantity_sum
FROM billing.events
WHERE occurred_at >= :period_start_ts AND occurred_at < :period_end_ts
