-- Findings finance can work through: one row per stable finding (source, kind, organisation,
-- reference) over the per-day observations in recon.discrepancies, with first and last day seen and
-- a status (open -> acknowledged -> resolved | wont_fix; cleared when the data stops showing it).
-- Updated set-based by billing_pipeline/findings after each reconciliation writes its days.
-- Also: the kind unapplied_payment (captured money no finalized invoice takes), split out of
-- missing_internal.

ALTER TABLE recon.discrepancies DROP CONSTRAINT discrepancies_kind_check;
ALTER TABLE recon.discrepancies ADD CONSTRAINT discrepancies_kind_check CHECK (kind IN (
    'missing_internal', 'missing_at_provider', 'amount_mismatch', 'status_mismatch', 'duplicate',
    'missing_event', 'aggregate_mismatch', 'missing_call', 'unapplied_payment'));

CREATE TABLE recon.findings (
    finding_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source                text NOT NULL,
    kind                  text NOT NULL,
    organisation_id       text,
    reference             text,
    provider              text,
    currency              char(3),
    internal_amount_minor bigint,   -- as last seen
    provider_amount_minor bigint,
    detail                text NOT NULL,
    first_seen            date NOT NULL,
    last_seen             date NOT NULL,
    status                text NOT NULL DEFAULT 'open'
                          CHECK (status IN ('open', 'acknowledged', 'resolved', 'wont_fix', 'cleared')),
    cleared_on            date,     -- the first day the data no longer showed it
    status_note           text,
    status_changed_at     timestamptz NOT NULL DEFAULT now(),
    times_reopened        integer NOT NULL DEFAULT 0,
    CHECK (last_seen >= first_seen),
    CHECK ((status = 'cleared') = (cleared_on IS NOT NULL)),
    UNIQUE NULLS NOT DISTINCT (source, kind, organisation_id, reference)
);
CREATE INDEX findings_status ON recon.findings (status, kind) WHERE status IN ('open', 'acknowledged');
