-- A grace period for every finalized, still unpaid invoice that a failed payment names (its invoice id
-- or number, in the payment's metadata/notes or its payment intent's/order's), failed at or before
-- :as_of. It starts at the first such failure and lasts the grace_period_days of the plan version the
-- invoice was priced with. An invoice has at most one grace period, ever (UNIQUE (invoice_id,
-- organisation_id), the organisation being the invoice's: a composite foreign key, sql/0090).
WITH failed AS (
    SELECT p.payment_id, p.provider_created_at, COALESCE(p.invoice_ref, parent.invoice_ref) AS ref
    FROM billing.payments p
    LEFT JOIN billing.payments parent
           ON parent.provider = p.provider AND parent.object_id = p.parent_object_id
    WHERE p.status = 'failed'
      AND ((p.provider = 'stripe' AND p.object_type = 'charge') OR (p.provider = 'razorpay' AND p.object_type = 'payment'))
      AND p.provider_created_at <= :as_of
),
-- a reference is an invoice number or an invoice id: two index lookups, whatever the table statistics
failures AS (
    SELECT DISTINCT ON (i.invoice_id) i.invoice_id, f.payment_id, f.provider_created_at AS failed_at
    FROM failed f
    LEFT JOIN billing.invoices by_number ON by_number.number = f.ref
    LEFT JOIN billing.invoices by_id
           ON by_id.invoice_id = CASE WHEN f.ref ~ '^[0-9]{1,18}$' THEN CAST(f.ref AS bigint) END
    JOIN billing.invoices i ON i.invoice_id = COALESCE(by_number.invoice_id, by_id.invoice_id)
                           AND i.status = 'finalized'
    ORDER BY i.invoice_id, f.provider_created_at, f.payment_id
)
INSERT INTO billing.grace_periods (invoice_id, organisation_id, currency, balance_minor, failed_payment_id,
                                   grace_days, started_at, ends_at, opened_by)
SELECT b.invoice_id, b.organisation_id, b.currency, b.balance_minor, f.payment_id, pl.grace_period_days,
       f.failed_at, f.failed_at + make_interval(hours => 24 * pl.grace_period_days), CAST(:actor AS text)
FROM failures f
JOIN billing.invoice_balances b ON b.invoice_id = f.invoice_id
JOIN billing.invoices i ON i.invoice_id = f.invoice_id
JOIN billing.plans pl ON pl.plan_id = i.plan_id
WHERE b.balance_minor > 0
ON CONFLICT (invoice_id, organisation_id) DO NOTHING
RETURNING grace_id, invoice_id, organisation_id, currency, balance_minor, grace_days, started_at, ends_at,
          (SELECT number FROM billing.invoices WHERE invoice_id = grace_periods.invoice_id) AS number,
          (SELECT provider || ' ' || object_id FROM billing.payments WHERE payment_id = grace_periods.failed_payment_id) AS failed_payment
