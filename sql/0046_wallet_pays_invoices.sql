-- A prepaid wallet pays invoices first where the organisation's catalog says so (wallet.pays_invoices):
-- payment_collection debits what the wallet holds (never into its debt limit) before it asks the
-- provider for the rest (billing_pipeline/payments/collection.py). Each such payment is a wallet ledger
-- entry (kind adjustment, reference invoice:<id>, so once per invoice) and a row here, which
-- billing.invoice_balances counts as paid.
ALTER TABLE billing.organisations ADD COLUMN wallet_pays_invoices boolean NOT NULL DEFAULT false;

CREATE TABLE billing.invoice_wallet_payments (
    invoice_id    bigint PRIMARY KEY REFERENCES billing.invoices (invoice_id),
    wallet_entry_id bigint NOT NULL,      -- billing.wallet_entries (created by a later migration)
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    currency      char(3) NOT NULL,
    paid_by       text NOT NULL,
    paid_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER invoice_wallet_payments_append_only BEFORE UPDATE OR DELETE ON billing.invoice_wallet_payments
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();

-- 0044's balances, with wallet payments counted as paid (paid_minor: provider payments and wallet).
CREATE OR REPLACE VIEW billing.invoice_balances AS
SELECT i.invoice_id, i.number, i.organisation_id, i.currency, i.period_start, i.period_end, i.finalized_at,
       i.total_minor,
       COALESCE(a.paid_minor, 0) + COALESCE(w.amount_minor, 0) AS paid_minor,
       i.total_minor - COALESCE(c.credited_minor, 0) + COALESCE(c.refunded_minor, 0) - COALESCE(a.paid_minor, 0)
           - COALESCE(w.amount_minor, 0) AS balance_minor,
       billing.settlement_state(i.total_minor - COALESCE(c.credited_minor, 0) + COALESCE(c.refunded_minor, 0),
                                COALESCE(a.paid_minor, 0) + COALESCE(w.amount_minor, 0)) AS settlement_state,
       COALESCE(a.payments, 0) AS payments,
       a.last_allocated_at,
       COALESCE(c.credited_minor, 0) AS credited_minor,
       COALESCE(c.refunded_minor, 0) AS refunded_minor,
       COALESCE(w.amount_minor, 0) AS wallet_paid_minor
FROM billing.invoices i
LEFT JOIN (
    SELECT invoice_id, sum(amount_minor)::bigint AS paid_minor, count(DISTINCT payment_id) AS payments,
           max(allocated_at) AS last_allocated_at
    FROM billing.invoice_payments GROUP BY invoice_id
) a ON a.invoice_id = i.invoice_id
LEFT JOIN billing.invoice_credits c ON c.invoice_id = i.invoice_id
LEFT JOIN billing.invoice_wallet_payments w ON w.invoice_id = i.invoice_id
WHERE i.status = 'finalized';
