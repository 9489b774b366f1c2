-- The catalog: billable metrics, versioned price plans with their charges, organisations.
-- Applied from YAML by `billing-pipeline catalog apply`; a changed plan becomes a new version.

CREATE TABLE billing.billable_metrics (
    code            text PRIMARY KEY,
    name            text NOT NULL,
    aggregation     text NOT NULL CHECK (aggregation IN
                        ('count', 'sum', 'max', 'unique_count', 'latest', 'weighted_sum')),
    field_name      text,            -- the property counted by unique_count
    allow_negative  boolean NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((aggregation = 'unique_count') = (field_name IS NOT NULL))
);

CREATE TABLE billing.plans (
    plan_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code                text NOT NULL,
    version             integer NOT NULL CHECK (version >= 1),
    name                text NOT NULL,
    currency            char(3) NOT NULL,
    minimum_commitment  numeric(24, 12),
    grace_period_days   integer NOT NULL DEFAULT 7 CHECK (grace_period_days >= 0),
    trial_days          integer NOT NULL DEFAULT 0 CHECK (trial_days >= 0),
    definition          jsonb NOT NULL,   -- the plan as applied: the pricing snapshot invoices copy
    content_hash        text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (code, version)
);

CREATE TABLE billing.plan_charges (
    plan_id     bigint NOT NULL REFERENCES billing.plans (plan_id),
    metric_code text NOT NULL REFERENCES billing.billable_metrics (code),
    model       text NOT NULL CHECK (model IN
                    ('standard', 'graduated', 'volume', 'package', 'percentage', 'graduated_percentage')),
    properties  jsonb NOT NULL,
    PRIMARY KEY (plan_id, metric_code)
);

CREATE TABLE billing.organisations (
    organisation_id      text PRIMARY KEY,
    name                 text NOT NULL,
    plan_code            text NOT NULL,
    plan_id              bigint NOT NULL REFERENCES billing.plans (plan_id),  -- current version
    currency             char(3) NOT NULL,
    provider             text NOT NULL CHECK (provider IN ('stripe', 'razorpay', 'none')),
    provider_customer_id text,
    tax_rate             numeric(9, 6) NOT NULL DEFAULT 0 CHECK (tax_rate >= 0 AND tax_rate < 1),
    discounts            jsonb NOT NULL DEFAULT '[]',
    prepaid_credits_minor bigint NOT NULL DEFAULT 0 CHECK (prepaid_credits_minor >= 0),
    debt_limit_minor     bigint NOT NULL DEFAULT 500 CHECK (debt_limit_minor >= 0),
    recharge_threshold_minor bigint NOT NULL DEFAULT 0,
    trial_ends_at        timestamptz,
    status               text NOT NULL DEFAULT 'active'
                             CHECK (status IN ('trialing', 'active', 'grace', 'restricted', 'downgraded')),
    catalog_hash         text NOT NULL,   -- hash of this organisation's catalog entry, for idempotent apply
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.projects (
    project_id      text PRIMARY KEY,
    organisation_id text NOT NULL REFERENCES billing.organisations (organisation_id),
    name            text NOT NULL
);

CREATE TABLE billing.catalog_applications (
    application_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_file    text NOT NULL,
    content_hash   text NOT NULL,
    applied_by     text NOT NULL,
    summary        jsonb NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now()
);
