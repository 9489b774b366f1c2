-- Credit notes: corrections of a finalized invoice (billing_pipeline/invoicing/credit_notes.py).
-- A credit note is numbered gap-free in its own series (billing.invoice_number_counters, issuer 'CN':
-- CN-2026-000001), immutable once written (like a finalized invoice), audited, and never takes an
-- invoice below zero: the sum of its credit notes never exceeds the invoice's total (checked under a
-- lock on the invoice's row in billing.credit_note_totals).
--
-- What a credit note does with its amount:
--   applied_minor  lowers what is still due on the invoice (the unpaid part);
--   refund_minor   goes back to the customer: through the provider that took the payment, or to the
--                  organisation's prepaid wallet (refund_method), as one row of billing.refunds.
-- billing.invoice_balances then reads: due = total - credited + refunded - paid, where paid keeps
-- counting money that a credit note refunded (settlement does not take those refunds off the payment).

CREATE TABLE billing.credit_notes (
    credit_note_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number           text NOT NULL UNIQUE,
    invoice_id       bigint NOT NULL REFERENCES billing.invoices (invoice_id),
    organisation_id  text NOT NULL REFERENCES billing.organisations (organisation_id),
    currency         char(3) NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    applied_minor    bigint NOT NULL CHECK (applied_minor >= 0),
    refund_minor     bigint NOT NULL CHECK (refund_minor >= 0),
    refund_method    text CHECK (refund_method IN ('provider', 'wallet')),
    reason           text NOT NULL CHECK (btrim(reason) <> ''),
    scope            text NOT NULL CHECK (scope IN ('invoice', 'lines', 'amount')),
    issued_at        timestamptz NOT NULL DEFAULT now(),
    issued_by        text NOT NULL,
    CHECK (applied_minor + refund_minor = amount_minor),
    CHECK ((refund_minor > 0) = (refund_method IS NOT NULL))
);
CREATE INDEX credit_notes_invoice ON billing.credit_notes (invoice_id);

CREATE TABLE billing.credit_note_lines (
    credit_note_line_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    credit_note_id      bigint NOT NULL REFERENCES billing.credit_notes (credit_note_id),
    invoice_line_id     bigint REFERENCES billing.invoice_lines (line_id),   -- NULL: an amount credit
    description         text NOT NULL,
    amount_minor        bigint NOT NULL CHECK (amount_minor > 0)
);
CREATE INDEX credit_note_lines_note ON billing.credit_note_lines (credit_note_id);
CREATE INDEX credit_note_lines_invoice_line ON billing.credit_note_lines (invoice_line_id);

CREATE TRIGGER credit_notes_immutable BEFORE UPDATE OR DELETE ON billing.credit_notes
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER credit_notes_no_truncate BEFORE TRUNCATE ON billing.credit_notes
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER credit_note_lines_immutable BEFORE UPDATE OR DELETE ON billing.credit_note_lines
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER credit_note_lines_no_truncate BEFORE TRUNCATE ON billing.credit_note_lines
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();

-- Never more than the invoice's total in credit notes, whoever inserts (a deferred check per statement).
CREATE FUNCTION billing.credit_notes_within_total() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    over text;
BEGIN
    SELECT format('invoice %s: credit notes total %s, more than its total %s', i.number, sum(c.amount_minor),
                  i.total_minor)
    INTO over
    FROM billing.credit_notes c JOIN billing.invoices i ON i.invoice_id = c.invoice_id
    WHERE c.invoice_id IN (SELECT invoice_id FROM changed_new)
    GROUP BY i.invoice_id, i.number, i.total_minor
    HAVING sum(c.amount_minor) > i.total_minor
    LIMIT 1;
    IF over IS NOT NULL THEN
        RAISE EXCEPTION '%', over USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM changed_new c JOIN billing.invoices i ON i.invoice_id = c.invoice_id
               WHERE i.status <> 'finalized' OR i.currency <> c.currency OR i.organisation_id <> c.organisation_id) THEN
        RAISE EXCEPTION 'a credit note needs a finalized invoice of its organisation and currency'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER credit_notes_within_total AFTER INSERT ON billing.credit_notes
    REFERENCING NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION billing.credit_notes_within_total();

-- Money a credit note sends back: through the provider that took the payment (Stripe refund, Razorpay
-- refund, idempotent on the credit note: key `credit_note:<id>`) or to the prepaid wallet.
CREATE TABLE billing.refunds (
    refund_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    credit_note_id     bigint NOT NULL UNIQUE REFERENCES billing.credit_notes (credit_note_id),
    invoice_id         bigint NOT NULL REFERENCES billing.invoices (invoice_id),
    organisation_id    text NOT NULL REFERENCES billing.organisations (organisation_id),
    method             text NOT NULL CHECK (method IN ('stripe', 'razorpay', 'wallet')),
    payment_id         bigint REFERENCES billing.payments (payment_id),   -- the payment refunded (provider)
    idempotency_key    text NOT NULL UNIQUE,
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    currency           char(3) NOT NULL,
    status             text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    provider_object_id text,                 -- the Stripe/Razorpay refund id, or the wallet entry id
    error_message      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    CHECK ((method = 'wallet') = (payment_id IS NULL)),
    CHECK ((status = 'pending') = (completed_at IS NULL))
);
CREATE INDEX refunds_payment ON billing.refunds (payment_id) WHERE payment_id IS NOT NULL;
CREATE INDEX refunds_provider_object ON billing.refunds (provider_object_id) WHERE provider_object_id IS NOT NULL;

-- Per invoice: credited (every credit note) and refunded (credit-note refunds not failed).
CREATE VIEW billing.invoice_credits AS
SELECT c.invoice_id, sum(c.amount_minor)::bigint AS credited_minor,
       COALESCE(sum(r.amount_minor) FILTER (WHERE r.status <> 'failed'), 0)::bigint AS refunded_minor,
       count(*) AS credit_notes
FROM billing.credit_notes c LEFT JOIN billing.refunds r ON r.credit_note_id = c.credit_note_id
GROUP BY c.invoice_id;

-- The balances of 0041, with credit notes: the same columns (and two more at the end).
CREATE OR REPLACE VIEW billing.invoice_balances AS
SELECT i.invoice_id, i.number, i.organisation_id, i.currency, i.period_start, i.period_end, i.finalized_at,
       i.total_minor,
       COALESCE(a.paid_minor, 0) AS paid_minor,
       i.total_minor - COALESCE(c.credited_minor, 0) + COALESCE(c.refunded_minor, 0) - COALESCE(a.paid_minor, 0)
           AS balance_minor,
       billing.settlement_state(i.total_minor - COALESCE(c.credited_minor, 0) + COALESCE(c.refunded_minor, 0),
                                COALESCE(a.paid_minor, 0)) AS settlement_state,
       COALESCE(a.payments, 0) AS payments,
       a.last_allocated_at,
       COALESCE(c.credited_minor, 0) AS credited_minor,
       COALESCE(c.refunded_minor, 0) AS refunded_minor
FROM billing.invoices i
LEFT JOIN (
    SELECT invoice_id, sum(amount_minor)::bigint AS paid_minor, count(DISTINCT payment_id) AS payments,
           max(allocated_at) AS last_allocated_at
    FROM billing.invoice_payments GROUP BY invoice_id
) a ON a.invoice_id = i.invoice_id
LEFT JOIN billing.invoice_credits c ON c.invoice_id = i.invoice_id
WHERE i.status = 'finalized';
