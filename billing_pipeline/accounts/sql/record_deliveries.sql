-- The results of one delivery chunk (:results, a JSON array): sent rows get sent_at and the channel;
-- failed ones their error, one more attempt and the time of the next, or dead_at after the last.
WITH r AS (
    SELECT * FROM jsonb_to_recordset(CAST(:results AS jsonb))
        AS r(notification_id bigint, error text, next_attempt_at timestamptz, dead boolean)
)
UPDATE billing.notification_outbox n
SET attempts = n.attempts + 1,
    sent_at = CASE WHEN r.error IS NULL THEN CAST(:now AS timestamptz) END,
    sent_via = CASE WHEN r.error IS NULL THEN CAST(:via AS text) END,
    last_error = COALESCE(r.error, n.last_error),
    next_attempt_at = CASE WHEN r.error IS NULL THEN n.next_attempt_at ELSE r.next_attempt_at END,
    dead_at = CASE WHEN r.dead THEN CAST(:now AS timestamptz) END
FROM r
WHERE n.notification_id = r.notification_id AND n.sent_at IS NULL AND n.dead_at IS NULL
