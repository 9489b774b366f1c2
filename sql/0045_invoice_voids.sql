-- Voids (billing_pipeline/invoicing/voids.py): a finalized, unpaid invoice can be voided. Its number
-- stays used and its row keeps every amount; only its status moves finalized -> void, the single change
-- the immutability trigger now lets through. A void invoice is as immutable as a finalized one. The
-- void itself (reason, who, when) is in billing.invoice_voids, a replacement in billing.invoice_replacements.
--
-- Late usage billed on a voided invoice becomes billable again: an event may be billed once on a
-- non-void invoice. invoice_late_events.event_id is no longer unique; billing.invoice_billed_events
-- holds one claim per event billed by a non-void invoice (its primary key is the uniqueness), written by
-- triggers as late events are inserted or deleted, and released when the invoice is voided.

CREATE OR REPLACE FUNCTION billing.invoice_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = 'finalized' AND NEW.status = 'void'
       AND (to_jsonb(NEW) - 'status') = (to_jsonb(OLD) - 'status')
       AND EXISTS (SELECT 1 FROM billing.invoice_voids v WHERE v.invoice_id = OLD.invoice_id) THEN
        RETURN NEW;  -- a void, recorded with its reason first: nothing else changes
    END IF;
    IF OLD.status IN ('finalized', 'void') THEN
        RAISE EXCEPTION 'invoice % (%) is %: % is not allowed', OLD.invoice_id, OLD.number, OLD.status, TG_OP
            USING ERRCODE = 'restrict_violation',
                  HINT = 'payments, credit notes, voids and dunning live in their own tables; an issued invoice never changes';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

-- the lines and late events of a void invoice stay as they were too
CREATE OR REPLACE FUNCTION billing.invoice_children_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    issued text;
BEGIN
    IF TG_TABLE_NAME = 'invoice_lines' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            SELECT i.number INTO issued FROM changed_new c
            JOIN billing.invoices i ON i.invoice_id = c.invoice_id AND i.status IN ('finalized', 'void') LIMIT 1;
        END IF;
        IF issued IS NULL AND TG_OP IN ('DELETE', 'UPDATE') THEN
            SELECT i.number INTO issued FROM changed_old c
            JOIN billing.invoices i ON i.invoice_id = c.invoice_id AND i.status IN ('finalized', 'void') LIMIT 1;
        END IF;
    ELSE
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            SELECT i.number INTO issued FROM changed_new c
            JOIN billing.invoice_lines l ON l.line_id = c.line_id
            JOIN billing.invoices i ON i.invoice_id = l.invoice_id AND i.status IN ('finalized', 'void') LIMIT 1;
        END IF;
        IF issued IS NULL AND TG_OP IN ('DELETE', 'UPDATE') THEN
            SELECT i.number INTO issued FROM changed_old c
            JOIN billing.invoice_lines l ON l.line_id = c.line_id
            JOIN billing.invoices i ON i.invoice_id = l.invoice_id AND i.status IN ('finalized', 'void') LIMIT 1;
        END IF;
    END IF;
    IF issued IS NOT NULL THEN
        RAISE EXCEPTION '% on %.% is not allowed: invoice % is issued (finalized or void)',
            TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, issued
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TABLE billing.invoice_voids (
    invoice_id             bigint PRIMARY KEY REFERENCES billing.invoices (invoice_id),
    number                 text NOT NULL,
    reason                 text NOT NULL CHECK (btrim(reason) <> ''),
    voided_at              timestamptz NOT NULL DEFAULT now(),
    voided_by              text NOT NULL,
    events_released        integer NOT NULL DEFAULT 0   -- late events billable again
);
CREATE TRIGGER invoice_voids_append_only BEFORE UPDATE OR DELETE ON billing.invoice_voids
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();

-- The invoice issued in place of a voided one (`invoice void --replace`).
CREATE TABLE billing.invoice_replacements (
    voided_invoice_id      bigint PRIMARY KEY REFERENCES billing.invoice_voids (invoice_id),
    replacement_invoice_id bigint NOT NULL UNIQUE REFERENCES billing.invoices (invoice_id),
    replaced_at            timestamptz NOT NULL DEFAULT now(),
    replaced_by            text NOT NULL
);
CREATE TRIGGER invoice_replacements_append_only BEFORE UPDATE OR DELETE ON billing.invoice_replacements
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();

CREATE TABLE billing.invoice_billed_events (
    event_id   text PRIMARY KEY,
    line_id    bigint NOT NULL
);
CREATE INDEX invoice_billed_events_line ON billing.invoice_billed_events (line_id);
INSERT INTO billing.invoice_billed_events (event_id, line_id)
SELECT le.event_id, le.line_id FROM billing.invoice_late_events le
JOIN billing.invoice_lines l ON l.line_id = le.line_id
JOIN billing.invoices i ON i.invoice_id = l.invoice_id AND i.status <> 'void';

ALTER TABLE billing.invoice_late_events DROP CONSTRAINT invoice_late_events_event_id_key;
CREATE INDEX invoice_late_events_event ON billing.invoice_late_events (event_id);

CREATE FUNCTION billing.invoice_billed_events_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- a second non-void bill of one event fails here with unique_violation
        INSERT INTO billing.invoice_billed_events (event_id, line_id) SELECT event_id, line_id FROM changed_new;
    ELSE
        DELETE FROM billing.invoice_billed_events b USING changed_old o
        WHERE b.event_id = o.event_id AND b.line_id = o.line_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER invoice_late_events_claim AFTER INSERT ON billing.invoice_late_events
    REFERENCING NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_billed_events_claim();
CREATE TRIGGER invoice_late_events_release AFTER DELETE ON billing.invoice_late_events
    REFERENCING OLD TABLE AS changed_old
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_billed_events_claim();
