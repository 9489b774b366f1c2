-- Monthly invoicing: drafts, their lines, the late events a line billed, draft builds and the checks
-- that gate them, closed months, and the gap-free number counters. Immutability is in 0031.
--
-- Amounts are integer minor units of `currency`; unrounded amounts are numeric. A draft is replaced
-- wholesale when the month is drafted again; a finalized invoice never changes (0031's triggers).
-- Payment state, voiding and dunning live in other tables: nothing mutable after finalization here.

-- One row per drafting of a month: the drafts of a month all carry the build that wrote them, and the
-- checks record their verdict against that build, so finalization can insist on a checked build.
CREATE TABLE billing.invoice_draft_builds (
    build_id        uuid PRIMARY KEY,
    build_number    bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- drafting order (under the invoicing lock)
    period_start    date NOT NULL,
    built_at        timestamptz NOT NULL DEFAULT now(),
    built_by        text NOT NULL,                  -- run:<id> or cli:<user>
    draft_count     integer NOT NULL,
    -- the month's raw events when the drafts were built: finalization recounts them under the mover's
    -- lock and refuses a build whose month changed since (that usage would be on neither the invoice
    -- nor, having arrived before the month closed, a late line); NULL (not recorded) is refused too
    event_count     bigint,
    quantity_sum    numeric,
    summary         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX invoice_draft_builds_period ON billing.invoice_draft_builds (period_start, build_number);

CREATE TABLE billing.invoice_draft_checks (
    build_id        uuid NOT NULL REFERENCES billing.invoice_draft_builds (build_id),
    check_name      text NOT NULL,
    passed          boolean NOT NULL,
    blocking        boolean NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}',
    checked_by      text NOT NULL,
    checked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (build_id, check_name)
);

CREATE TABLE billing.invoices (
    invoice_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id       text NOT NULL REFERENCES billing.organisations (organisation_id),
    period_start          date NOT NULL,
    period_end            date NOT NULL,                 -- exclusive: the first day of the next month
    currency              char(3) NOT NULL,
    status                text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'finalized', 'void')),
    issuer                text NOT NULL DEFAULT 'INV',   -- numbering series: numbers are gap-free per issuer and year
    number                text UNIQUE,                   -- assigned at finalization: INV-2026-000001
    plan_id               bigint NOT NULL REFERENCES billing.plans (plan_id),
    plan_code             text NOT NULL,
    plan_version          integer NOT NULL,
    plan_snapshot         jsonb NOT NULL,                -- the plan and charges used, as priced
    tax_rate              numeric(9, 6) NOT NULL,
    subtotal_minor        bigint NOT NULL,
    discount_minor        bigint NOT NULL,
    tax_minor             bigint NOT NULL,
    credits_applied_minor bigint NOT NULL,
    total_minor           bigint NOT NULL,
    discounts_applied     jsonb NOT NULL DEFAULT '[]',   -- [{code, kind, amount_minor}] in the order applied
    problems              jsonb NOT NULL DEFAULT '[]',   -- why a line could not be priced (blocks finalization)
    build_id              uuid NOT NULL REFERENCES billing.invoice_draft_builds (build_id),
    created_at            timestamptz NOT NULL DEFAULT now(),
    created_by            text NOT NULL,
    finalized_at          timestamptz,
    finalized_by          text,
    CHECK (period_start = date_trunc('month', period_start)::date),
    CHECK (period_end = (period_start + interval '1 month')::date),
    CHECK (status <> 'finalized' OR (number IS NOT NULL AND finalized_at IS NOT NULL AND finalized_by IS NOT NULL)),
    CHECK (status <> 'draft' OR (number IS NULL AND finalized_at IS NULL))
);
-- At most one non-void invoice per organisation, month and currency (with the advisory lock the
-- invoicing code takes, two concurrent runs produce one invoice).
CREATE UNIQUE INDEX invoices_one_per_org_period
    ON billing.invoices (organisation_id, period_start, currency) WHERE status <> 'void';
CREATE INDEX invoices_period_status ON billing.invoices (period_start, status);
CREATE INDEX invoices_build ON billing.invoices (build_id);

CREATE TABLE billing.invoice_lines (
    line_id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id            bigint NOT NULL REFERENCES billing.invoices (invoice_id) ON DELETE CASCADE,
    kind                  text NOT NULL CHECK (kind IN ('usage', 'commitment_true_up', 'late_usage')),
    metric                text,                          -- null for the commitment true-up
    aggregation           text,
    units                 numeric,                       -- late_usage: units added since last billed
    model                 text,
    amount_unrounded      numeric NOT NULL,
    amount_minor          bigint NOT NULL,               -- rounded once, half-up, to the currency's minor unit
    original_period_start date,                          -- late_usage: the finalized month the usage belongs to
    charge                jsonb,                         -- the charge as priced, and for late lines what was billed before
    CHECK ((kind = 'late_usage') = (original_period_start IS NOT NULL)),
    CHECK ((kind = 'commitment_true_up') = (metric IS NULL))
);
CREATE UNIQUE INDEX invoice_lines_one_per_key
    ON billing.invoice_lines (invoice_id, kind, metric, original_period_start) NULLS NOT DISTINCT;

-- The late events each late_usage line billed: an event appears once, on one line, ever.
CREATE TABLE billing.invoice_late_events (
    line_id      bigint NOT NULL REFERENCES billing.invoice_lines (line_id) ON DELETE CASCADE,
    event_id     text NOT NULL UNIQUE,
    occurred_at  timestamptz NOT NULL,
    ingested_at  timestamptz NOT NULL,
    quantity     numeric(38, 12) NOT NULL
);
CREATE INDEX invoice_late_events_line ON billing.invoice_late_events (line_id);

-- A month is closed when its drafts are finalized (all at once). Usage of a closed month ingested
-- after closed_at is billed as late usage on the organisation's next invoice; a closed month is never
-- drafted again.
CREATE TABLE billing.invoice_periods (
    period_start   date PRIMARY KEY CHECK (period_start = date_trunc('month', period_start)::date),
    closed_at      timestamptz NOT NULL,
    closed_by      text NOT NULL,
    build_id       uuid REFERENCES billing.invoice_draft_builds (build_id),
    invoice_count  integer NOT NULL
);

CREATE TABLE billing.invoice_number_counters (
    issuer       text NOT NULL,
    year         integer NOT NULL,
    last_number  bigint NOT NULL CHECK (last_number >= 0),
    PRIMARY KEY (issuer, year)
);
