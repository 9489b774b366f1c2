-- migration_complete: edge events of the month (staged from the edge store into edge_month) that are
-- neither in billing.events nor in billing.quarantined_events. occurred_at is parsed as the mover
-- parses it; rows whose occurred_at does not parse belong to no month. A processed edge row without
-- an event_id cannot be looked up (the mover quarantined it with a null id) and is left out.
SELECT coalesce(nullif(s.organisation_id, ''), '(none)') AS organisation_id,
       count(*) FILTER (WHERE NOT s.processed) AS not_moved,
       count(*) FILTER (WHERE s.processed) AS lost
FROM (
    SELECT *, CASE WHEN billing.input_is_valid(occurred_at, 'timestamptz') THEN occurred_at::timestamptz END AS occurred_ts
    FROM edge_month
) s
WHERE s.occurred_ts >= :period_start_ts AND s.occurred_ts < :period_end_ts
  AND (NOT s.processed OR coalesce(s.event_id, '') <> '')
  AND NOT EXISTS (SELECT 1 FROM billing.event_ids i WHERE i.event_id = s.event_id)  -- the ids of billing.events
  AND NOT EXISTS (SELECT 1 FROM billing.quarantined_events q WHERE q.event_id = s.event_id)
GROUP BY 1
ORDER BY 1
