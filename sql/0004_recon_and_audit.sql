-- What finance reads: one discrepancies table shared by every reconciliation asset, and the
-- append-only audit log of billing state changes.

CREATE TABLE recon.discrepancies (
    discrepancy_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recon_date            date NOT NULL,
    source                text NOT NULL,   -- the reconciliation asset that wrote the row
    kind                  text NOT NULL CHECK (kind IN (
                              'missing_internal', 'missing_at_provider', 'amount_mismatch',
                              'status_mismatch', 'duplicate', 'missing_event', 'aggregate_mismatch',
                              'missing_call')),
    provider              text,
    organisation_id       text,
    reference             text,
    internal_amount_minor bigint,
    provider_amount_minor bigint,
    currency              char(3),
    detail                text NOT NULL,
    detected_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX discrepancies_date_source ON recon.discrepancies (recon_date, source);

CREATE TABLE billing.audit_log (
    audit_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_type text NOT NULL,        -- invoice, payment, wallet, organisation, ...
    entity_id   text NOT NULL,
    action      text NOT NULL,
    from_state  text,
    to_state    text,
    actor       text NOT NULL,        -- run:<run id>, sensor:<name>, cli:<user>
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_entity ON billing.audit_log (entity_type, entity_id);

CREATE FUNCTION billing.reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on %.% is not allowed: the table is append-only',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON billing.audit_log
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON billing.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();
