-- Settlement of finalized invoices. Finalized invoices are immutable, so "paid" is derived: an
-- append-only ledger of allocations (payment -> invoice, signed deltas in the invoice's currency) and
-- the view billing.invoice_balances (paid, balance and settlement state per finalized invoice).

CREATE TABLE billing.invoice_payments (
    allocation_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id     bigint NOT NULL REFERENCES billing.invoices (invoice_id),
    payment_id     bigint NOT NULL REFERENCES billing.payments (payment_id),
    amount_minor   bigint NOT NULL CHECK (amount_minor <> 0),  -- a delta: captured (+), refunded (-)
    currency       char(3) NOT NULL,
    rule           text NOT NULL CHECK (rule IN ('reference', 'customer_amount_window')),
    allocated_by   text NOT NULL,
    allocated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoice_payments_invoice ON billing.invoice_payments (invoice_id);
CREATE INDEX invoice_payments_payment ON billing.invoice_payments (payment_id);

CREATE TRIGGER invoice_payments_append_only BEFORE UPDATE OR DELETE ON billing.invoice_payments
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER invoice_payments_no_truncate BEFORE TRUNCATE ON billing.invoice_payments
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();

CREATE FUNCTION billing.settlement_state(total_minor bigint, paid_minor bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN paid_minor > total_minor THEN 'overpaid'
                WHEN paid_minor = total_minor THEN 'paid'
                WHEN paid_minor > 0 THEN 'partially_paid'
                ELSE 'unpaid' END
$$;

CREATE VIEW billing.invoice_balances AS
SELECT i.invoice_id, i.number, i.organisation_id, i.currency, i.period_start, i.period_end, i.finalized_at,
       i.total_minor,
       COALESCE(a.paid_minor, 0) AS paid_minor,
       i.total_minor - COALESCE(a.paid_minor, 0) AS balance_minor,
       billing.settlement_state(i.total_minor, COALESCE(a.paid_minor, 0)) AS settlement_state,
       COALESCE(a.payments, 0) AS payments,
       a.last_allocated_at
FROM billing.invoices i
LEFT JOIN (
    SELECT invoice_id, sum(amount_minor)::bigint AS paid_minor, count(DISTINCT payment_id) AS payments,
           max(allocated_at) AS last_allocated_at
    FROM billing.invoice_payments GROUP BY invoice_id
) a ON a.invoice_id = i.invoice_id
WHERE i.status = 'finalized';
