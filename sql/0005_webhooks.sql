-- Verified provider webhooks, stored before anything else happens and answered 2xx at once.
-- Processing is asynchronous: each event is applied at most once (processed_at), retried with
-- exponential backoff (next_attempt_at), and after the last attempt moved to the dead letters.

CREATE TABLE billing.webhook_inbox (
    inbox_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider        text NOT NULL CHECK (provider IN ('stripe', 'razorpay', 'vapi')),
    event_id        text NOT NULL,           -- the provider's event id (dedupe key)
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    raw_body        bytea NOT NULL,          -- exactly as signed, for audits and replays
    received_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    processed_at    timestamptz,
    dead_at         timestamptz,
    UNIQUE (provider, event_id)
);
CREATE INDEX webhook_inbox_due ON billing.webhook_inbox (next_attempt_at)
    WHERE processed_at IS NULL AND dead_at IS NULL;

CREATE TABLE billing.webhook_dead_letters (
    dead_letter_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    inbox_id        bigint NOT NULL REFERENCES billing.webhook_inbox (inbox_id),
    provider        text NOT NULL,
    event_id        text NOT NULL,
    attempts        integer NOT NULL,
    last_error      text NOT NULL,
    died_at         timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz
);
CREATE INDEX webhook_dead_letters_waiting ON billing.webhook_dead_letters (died_at) WHERE replayed_at IS NULL;
