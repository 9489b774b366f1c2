-- Payments: the ledger of provider money objects (billing.payments), applied from verified webhooks
-- (early hints) and from the daily provider syncs (the truth), and the provider's own view of the same
-- objects (billing.provider_records, plus Stripe balance transactions and Razorpay settlements) that
-- payment_reconciliation compares it with. Amounts are integer minor units of `currency`.
--
-- One row per provider object whatever the replays and overlaps: UNIQUE (provider, object_id).
-- States only move forward; the order lives in billing_pipeline/payments/states.py, which writes
-- status_rank next to status so the database can compare them in one set-based upsert.

CREATE TABLE billing.payments (
    payment_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider              text NOT NULL CHECK (provider IN ('stripe', 'razorpay')),
    object_type           text NOT NULL
                              CHECK (object_type IN ('charge', 'payment_intent', 'refund', 'payment', 'order')),
    object_id             text NOT NULL,
    parent_object_id      text,          -- charge -> payment intent, payment -> order, refund -> charge/payment
    organisation_id       text,          -- resolved from metadata/notes or the provider customer; NULL: unknown
    provider_customer_id  text,
    invoice_ref           text,          -- invoice_id or invoice number named in metadata (Stripe) / notes (Razorpay)
    amount_minor          bigint NOT NULL CHECK (amount_minor >= 0),  -- as first recorded; never rewritten
    amount_refunded_minor bigint NOT NULL DEFAULT 0 CHECK (amount_refunded_minor >= 0),  -- only grows
    currency              char(3) NOT NULL,
    fee_minor             bigint,
    status                text NOT NULL CHECK (status IN ('created', 'pending', 'authorized', 'failed', 'canceled',
                              'captured', 'succeeded', 'partially_refunded', 'refunded')),
    status_rank           smallint NOT NULL,
    provider_status       text NOT NULL,  -- the provider's own word for the state applied
    provider_created_at   timestamptz NOT NULL,
    first_seen_via        text NOT NULL CHECK (first_seen_via IN ('webhook', 'sync')),
    webhook_seen_at       timestamptz,    -- first webhook about the object; NULL: only the sync told us
    last_event_id         text,
    raw                   jsonb NOT NULL,  -- the object as last applied
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, object_id)
);
CREATE INDEX payments_provider_created_at ON billing.payments (provider_created_at);
CREATE INDEX payments_parent ON billing.payments (provider, parent_object_id) WHERE parent_object_id IS NOT NULL;

-- The provider's side: every Stripe charge and refund, Razorpay payment, order and refund the daily
-- syncs listed, as the provider last showed it (idempotent upserts by provider id).
CREATE TABLE billing.provider_records (
    provider              text NOT NULL CHECK (provider IN ('stripe', 'razorpay')),
    object_type           text NOT NULL,
    object_id             text NOT NULL,
    parent_object_id      text,
    provider_customer_id  text,
    invoice_ref           text,
    amount_minor          bigint NOT NULL,
    amount_refunded_minor bigint NOT NULL DEFAULT 0,
    currency              char(3) NOT NULL,
    fee_minor             bigint,
    status                text NOT NULL,   -- canonical, as in billing.payments
    provider_status       text NOT NULL,
    created_at            timestamptz NOT NULL,
    raw                   jsonb NOT NULL,
    first_synced_at       timestamptz NOT NULL DEFAULT now(),
    synced_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, object_id)
);
CREATE INDEX provider_records_created_at ON billing.provider_records (created_at);

CREATE TABLE billing.stripe_balance_transactions (
    balance_transaction_id text PRIMARY KEY,
    amount_minor          bigint NOT NULL,
    fee_minor             bigint NOT NULL,
    net_minor             bigint NOT NULL,
    currency              char(3) NOT NULL,
    type                  text NOT NULL,
    reporting_category    text,
    source                text,             -- the charge or refund it moved money for
    status                text NOT NULL,
    available_on          timestamptz,
    created_at            timestamptz NOT NULL,
    raw                   jsonb NOT NULL,
    synced_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_balance_transactions_source ON billing.stripe_balance_transactions (source);

CREATE TABLE billing.razorpay_settlements (
    settlement_id         text PRIMARY KEY,
    amount_minor          bigint NOT NULL,
    fees_minor            bigint NOT NULL,
    tax_minor             bigint NOT NULL,
    utr                   text,
    status                text NOT NULL,
    created_at            timestamptz NOT NULL,
    raw                   jsonb NOT NULL,
    synced_at             timestamptz NOT NULL DEFAULT now()
);

-- One row per provider and synced day: payment_reconciliation refuses a day whose provider was not
-- synced (every ledger row would otherwise look missing at the provider).
CREATE TABLE billing.provider_syncs (
    provider      text NOT NULL CHECK (provider IN ('stripe', 'razorpay')),
    sync_date     date NOT NULL,
    window_start  timestamptz NOT NULL,   -- the listing window, overlap included
    window_end    timestamptz NOT NULL,
    counts        jsonb NOT NULL,
    synced_by     text NOT NULL,
    synced_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, sync_date)
);

-- Provider objects a sync listed but could not read (an unsupported currency, a missing field): kept
-- with the reason instead of being dropped, shown in the sync's metadata.
CREATE TABLE billing.provider_record_rejects (
    provider      text NOT NULL,
    object_type   text NOT NULL,
    object_id     text NOT NULL,
    reason        text NOT NULL,
    raw           jsonb NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, object_id)
);
