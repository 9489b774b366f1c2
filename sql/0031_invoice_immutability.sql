-- A finalized invoice is immutable: its row, its lines and the late events its lines billed reject
-- UPDATE and DELETE, and no line or late event can be added to it. Drafts stay editable and deletable.
-- TRUNCATE is refused while any finalized invoice exists. A closed month stays closed.

CREATE FUNCTION billing.invoice_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'finalized' THEN
        RAISE EXCEPTION 'invoice % (%) is finalized: % is not allowed', OLD.invoice_id, OLD.number, TG_OP
            USING ERRCODE = 'restrict_violation',
                  HINT = 'payments, voids and dunning live in their own tables; a finalized invoice never changes';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER invoices_immutable_when_finalized BEFORE UPDATE OR DELETE ON billing.invoices
    FOR EACH ROW EXECUTE FUNCTION billing.invoice_immutable();

-- Lines and late events: statement triggers over the transition tables (one lookup per statement,
-- not one per row). PL/pgSQL plans each statement when first reached, so a branch may name a
-- transition table that only the other events have. A draft deleted with its lines (ON DELETE
-- CASCADE) is already gone when the lines' trigger looks for it.
CREATE FUNCTION billing.invoice_children_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    finalized text;
BEGIN
    IF TG_TABLE_NAME = 'invoice_lines' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            SELECT i.number INTO finalized FROM changed_new c
            JOIN billing.invoices i ON i.invoice_id = c.invoice_id AND i.status = 'finalized' LIMIT 1;
        END IF;
        IF finalized IS NULL AND TG_OP IN ('DELETE', 'UPDATE') THEN
            SELECT i.number INTO finalized FROM changed_old c
            JOIN billing.invoices i ON i.invoice_id = c.invoice_id AND i.status = 'finalized' LIMIT 1;
        END IF;
    ELSE
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            SELECT i.number INTO finalized FROM changed_new c
            JOIN billing.invoice_lines l ON l.line_id = c.line_id
            JOIN billing.invoices i ON i.invoice_id = l.invoice_id AND i.status = 'finalized' LIMIT 1;
        END IF;
        IF finalized IS NULL AND TG_OP IN ('DELETE', 'UPDATE') THEN
            SELECT i.number INTO finalized FROM changed_old c
            JOIN billing.invoice_lines l ON l.line_id = c.line_id
            JOIN billing.invoices i ON i.invoice_id = l.invoice_id AND i.status = 'finalized' LIMIT 1;
        END IF;
    END IF;
    IF finalized IS NOT NULL THEN
        RAISE EXCEPTION '% on %.% is not allowed: invoice % is finalized',
            TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, finalized
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER invoice_lines_insert_immutable AFTER INSERT ON billing.invoice_lines
    REFERENCING NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_children_immutable();
CREATE TRIGGER invoice_lines_update_immutable AFTER UPDATE ON billing.invoice_lines
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_children_immutable();
CREATE TRIGGER invoice_lines_delete_immutable AFTER DELETE ON billing.invoice_lines
    REFERENCING OLD TABLE AS changed_old
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_children_immutable();

CREATE TRIGGER invoice_late_events_insert_immutable AFTER INSERT ON billing.invoice_late_events
    REFERENCING NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_children_immutable();
CREATE TRIGGER invoice_late_events_update_immutable AFTER UPDATE ON billing.invoice_late_events
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_children_immutable();
CREATE TRIGGER invoice_late_events_delete_immutable AFTER DELETE ON billing.invoice_late_events
    REFERENCING OLD TABLE AS changed_old
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_children_immutable();

CREATE FUNCTION billing.invoice_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM billing.invoices WHERE status = 'finalized') THEN
        RAISE EXCEPTION 'TRUNCATE on %.% is not allowed: finalized invoices exist', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON billing.invoices
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_no_truncate();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON billing.invoice_lines
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_no_truncate();
CREATE TRIGGER invoice_late_events_no_truncate BEFORE TRUNCATE ON billing.invoice_late_events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_no_truncate();

CREATE TRIGGER invoice_periods_append_only BEFORE UPDATE OR DELETE ON billing.invoice_periods
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER invoice_periods_no_truncate BEFORE TRUNCATE ON billing.invoice_periods
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();
