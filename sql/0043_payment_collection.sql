-- Payment collection: the first attempt to collect each finalized invoice at its organisation's provider
-- (billing_pipeline/payments/collection.py). One row per invoice, ever (UNIQUE invoice_id): two runs of
-- the same month claim each invoice once. The row is committed as `pending` before the provider is
-- called, with the idempotency key `collect:<invoice id>` and every parameter of the request, so a crash
-- between the call and the recording of its result repeats the very same request (Stripe replays its
-- first answer; a Razorpay link is first looked up by its reference id).
--
-- method: payment_intent (Stripe, confirmed off-session), payment_link (Razorpay, its URL sent through
-- the notification outbox), none (nothing due: a zero total, settled without a provider call; or the
-- organisation cannot be collected from: asked to pay, status skipped).
CREATE TABLE billing.collection_attempts (
    collection_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id           bigint NOT NULL UNIQUE REFERENCES billing.invoices (invoice_id),
    organisation_id      text NOT NULL REFERENCES billing.organisations (organisation_id),
    period_start         date NOT NULL,
    number               text NOT NULL,
    provider             text NOT NULL,
    method               text NOT NULL CHECK (method IN ('payment_intent', 'payment_link', 'none')),
    idempotency_key      text NOT NULL UNIQUE,
    provider_customer_id text,
    amount_minor         bigint NOT NULL CHECK (amount_minor >= 0),   -- the amount due when claimed
    currency             char(3) NOT NULL,
    status               text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'link_sent',
                             'nothing_due', 'skipped')),
    link_expire_by       timestamptz,          -- payment_link: fixed at claim, part of the request
    claimed_at           timestamptz NOT NULL,
    claimed_by           text NOT NULL,
    provider_object_id   text,                 -- the Stripe PaymentIntent or the Razorpay Payment Link
    provider_charge_id   text,
    link_url             text,
    error_code           text,
    error_message        text,
    completed_at         timestamptz,
    CHECK ((status = 'pending') = (completed_at IS NULL)),
    CHECK ((method = 'payment_link') = (link_expire_by IS NOT NULL)),
    CHECK (method <> 'none' OR status IN ('nothing_due', 'skipped'))
);
CREATE INDEX collection_attempts_pending ON billing.collection_attempts (claimed_at) WHERE status = 'pending';
CREATE INDEX collection_attempts_period ON billing.collection_attempts (period_start);
