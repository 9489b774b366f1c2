-- Accounts: grace periods of unpaid invoices, dunning retries through the provider, and the outbox of
-- customer notifications (billing_pipeline/accounts). Every state change of these rows and of an
-- organisation's status is also written to billing.audit_log, in the same transaction.
--
-- Times that decide a transition (started_at, ends_at, expired_at, paid_at, due_at) come from the
-- accounts run's clock (the end of its partition, never later than now); created_at/updated_at are the
-- database's own.

-- One grace period per invoice whose payment failed: it starts at the first failed payment naming the
-- invoice and lasts the invoice's plan's grace_period_days. While it is open the organisation keeps
-- access (status grace); once it expired unpaid the organisation is restricted; a payment ends it.
CREATE TABLE billing.grace_periods (
    grace_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id        bigint NOT NULL UNIQUE REFERENCES billing.invoices (invoice_id),
    organisation_id   text NOT NULL REFERENCES billing.organisations (organisation_id),
    currency          char(3) NOT NULL,
    balance_minor     bigint NOT NULL CHECK (balance_minor > 0),   -- owed when the grace period started
    failed_payment_id bigint NOT NULL REFERENCES billing.payments (payment_id),
    grace_days        integer NOT NULL CHECK (grace_days >= 0),
    started_at        timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL CHECK (ends_at >= started_at),
    status            text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'expired', 'paid')),
    expired_at        timestamptz,            -- kept when a payment later ends an expired period
    paid_at           timestamptz,
    opened_by         text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'paid') = (paid_at IS NOT NULL)),
    CHECK (status <> 'expired' OR expired_at IS NOT NULL)
);
CREATE INDEX grace_periods_unpaid ON billing.grace_periods (organisation_id) WHERE status <> 'paid';

-- One row per retry of an invoice's payment: `attempt` is the slot in the retry schedule (after 1, 3,
-- 5 and 7 days by default). The row is committed as `pending` before the provider is called with
-- idempotency_key, so a crash between the call and the recording of its result is retried with the same
-- key and the same parameters: the provider replays its first answer and never charges twice.
CREATE TABLE billing.dunning_attempts (
    attempt_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    grace_id             bigint NOT NULL REFERENCES billing.grace_periods (grace_id),
    invoice_id           bigint NOT NULL REFERENCES billing.invoices (invoice_id),
    organisation_id      text NOT NULL REFERENCES billing.organisations (organisation_id),
    attempt              integer NOT NULL CHECK (attempt >= 1),
    idempotency_key      text NOT NULL UNIQUE,
    provider             text NOT NULL,
    provider_customer_id text,
    amount_minor         bigint NOT NULL CHECK (amount_minor > 0),
    currency             char(3) NOT NULL,
    due_at               timestamptz NOT NULL,
    status               text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'skipped', 'canceled')),
    claimed_at           timestamptz NOT NULL,
    claimed_by           text NOT NULL,
    provider_object_id   text,                -- the Stripe PaymentIntent
    provider_charge_id   text,
    error_code           text,
    error_message        text,
    completed_at         timestamptz,
    UNIQUE (invoice_id, attempt),
    CHECK ((status = 'pending') = (completed_at IS NULL))
);
CREATE INDEX dunning_attempts_pending ON billing.dunning_attempts (claimed_at) WHERE status = 'pending';

-- Customer notifications, written in the transaction of the change they announce and sent afterwards
-- (SMTP, HTTP, or a log line). dedupe_key makes queueing idempotent; sent_at makes sending once.
CREATE TABLE billing.notification_outbox (
    notification_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedupe_key      text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('trial_ending', 'trial_ended', 'grace_started',
                        'grace_expired', 'payment_received', 'payment_retry_failed', 'payment_action_required')),
    organisation_id text NOT NULL REFERENCES billing.organisations (organisation_id),
    subject         text NOT NULL,
    body            text NOT NULL,
    payload         jsonb NOT NULL DEFAULT '{}',
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    sent_at         timestamptz,
    sent_via        text CHECK (sent_via IN ('smtp', 'http', 'log')),
    dead_at         timestamptz,
    CHECK ((sent_at IS NULL) = (sent_via IS NULL)),
    CHECK (sent_at IS NULL OR dead_at IS NULL)
);
CREATE INDEX notification_outbox_due ON billing.notification_outbox (next_attempt_at)
    WHERE sent_at IS NULL AND dead_at IS NULL;

-- Grace periods start from failed payments: the daily run reads only those, not every payment ever made.
CREATE INDEX payments_failed ON billing.payments (provider_created_at) WHERE status = 'failed';
