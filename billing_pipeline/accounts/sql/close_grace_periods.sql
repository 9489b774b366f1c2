-- Grace periods ended as of :as_of, in one statement: a period whose invoice is paid (balance <= 0 in
-- billing.invoice_balances) becomes `paid`, whether it was open or had expired; an open period whose
-- end has come, unpaid, becomes `expired`. Payment is looked at first, so a payment on the last day of
-- grace ends the period instead of restricting the organisation.
WITH target AS (
    SELECT g.grace_id, g.status AS from_status,
           CASE WHEN b.balance_minor <= 0 THEN 'paid' ELSE 'expired' END AS to_status,
           b.balance_minor, b.paid_minor
    FROM billing.grace_periods g
    JOIN billing.invoice_balances b ON b.invoice_id = g.invoice_id
    WHERE g.status <> 'paid'
      AND (b.balance_minor <= 0 OR (g.status = 'open' AND g.ends_at <= :as_of))
    FOR UPDATE OF g
)
UPDATE billing.grace_periods g
SET status = t.to_status,
    paid_at = CASE WHEN t.to_status = 'paid' THEN CAST(:as_of AS timestamptz) END,
    expired_at = CASE WHEN t.to_status = 'expired' THEN g.ends_at ELSE g.expired_at END,
    updated_at = now()
FROM target t
WHERE g.grace_id = t.grace_id
RETURNING g.grace_id, g.invoice_id, g.organisation_id, g.currency, g.ends_at, t.from_status, t.to_status,
          t.balance_minor, t.paid_minor,
          (SELECT number FROM billing.invoices WHERE invoice_id = g.invoice_id) AS number
