-- Voice calls (Vapi). billing.calls is what we bill: one row per Vapi call id, from its end-of-call
-- webhook or, when that never came, recovered by the call_reconciliation asset (reconciled = true).
-- billing.vapi_calls is the provider's side, as GET /call returned it (the vapi_calls asset).
-- A call is billed to the organisation named in its metadata.organisation_id (set when the call or
-- its assistant is created); its USD cost is charged once to that organisation's wallet.

CREATE TABLE billing.calls (
    call_id             text PRIMARY KEY,                    -- Vapi's call id
    organisation_id     text REFERENCES billing.organisations (organisation_id),  -- NULL: unattributed
    vapi_org_id         text,
    assistant_id        text,
    status              text,
    ended_reason        text,
    created_at          timestamptz NOT NULL,                -- Vapi createdAt: the call's day
    started_at          timestamptz,
    ended_at            timestamptz,
    provider_updated_at timestamptz,
    cost_usd            numeric,                             -- exact, as Vapi reported it; NULL = not known yet
    cost_minor          bigint,                              -- USD cents, rounded once half-up
    cost_breakdown      jsonb NOT NULL DEFAULT '{}',
    metadata            jsonb NOT NULL DEFAULT '{}',
    reconciled          boolean NOT NULL DEFAULT false,      -- inserted by call_reconciliation, not a webhook
    webhook_received_at timestamptz,                         -- when its end-of-call report was applied
    charge_status       text NOT NULL CHECK (charge_status IN ('pending', 'charged', 'refused', 'unattributed')),
    charge_entry_id     bigint REFERENCES billing.wallet_entries (entry_id),
    charged_minor       bigint,
    charge_detail       text,                                -- why refused / unattributed
    charged_at          timestamptz,
    inserted_at         timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((cost_usd IS NULL) = (cost_minor IS NULL)),
    CHECK (charge_status <> 'charged' OR charged_minor IS NOT NULL),
    CHECK ((charge_status = 'unattributed') = (organisation_id IS NULL))
);
CREATE INDEX calls_created_at ON billing.calls (created_at);
CREATE INDEX calls_pending ON billing.calls (created_at) WHERE charge_status = 'pending';

CREATE TABLE billing.vapi_calls (
    call_id             text PRIMARY KEY,
    vapi_org_id         text,
    claimed_organisation_id text,                            -- metadata.organisation_id, not validated
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    started_at          timestamptz,
    ended_at            timestamptz,
    status              text,
    ended_reason        text,
    cost_usd            numeric,
    cost_minor          bigint,
    raw                 jsonb NOT NULL,                      -- the call exactly as GET /call returned it
    fetched_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((cost_usd IS NULL) = (cost_minor IS NULL))
);
CREATE INDEX vapi_calls_created_at ON billing.vapi_calls (created_at);

-- One row per reconciled day (the call_reconciliation asset replaces its days' rows).
CREATE TABLE recon.call_reconciliation (
    recon_date              date PRIMARY KEY,
    provider_calls          integer NOT NULL,   -- ended calls GET /call returned for the day
    webhook_calls           integer NOT NULL,   -- of those, the ones whose end-of-call webhook reached us
    webhook_reliability     numeric(7, 6),      -- webhook_calls / provider_calls; NULL without calls
    recovered_calls         integer NOT NULL,   -- inserted by reconciliation (missing_call findings)
    recovered_revenue_minor bigint NOT NULL,    -- what those calls were charged, USD cents
    amount_mismatches       integer NOT NULL,
    missing_at_provider     integer NOT NULL,
    refused_calls           integer NOT NULL,   -- calls of the day whose charge the wallet refused
    unattributed_calls      integer NOT NULL,   -- calls of the day with no known organisation
    currency                char(3) NOT NULL DEFAULT 'USD',
    reconciled_at           timestamptz NOT NULL DEFAULT now()
);
