-- Queue notifications (:rows, a JSON array), due at :at. A dedupe_key already queued, sent or dead is
-- left as it is: announcing the same fact twice queues it once. The key is unique per organisation
-- (sql/0090): every dedupe key names an entity of the organisation it is queued for.
INSERT INTO billing.notification_outbox
    (dedupe_key, kind, organisation_id, subject, body, payload, created_by, next_attempt_at)
SELECT r.dedupe_key, r.kind, r.organisation_id, r.subject, r.body, COALESCE(r.payload, '{}'),
       CAST(:actor AS text), CAST(:at AS timestamptz)
FROM jsonb_to_recordset(CAST(:rows AS jsonb))
     AS r(dedupe_key text, kind text, organisation_id text, subject text, body text, payload jsonb)
ON CONFLICT (dedupe_key, organisation_id) DO NOTHING
