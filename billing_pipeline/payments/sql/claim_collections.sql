-- Claim the first collection of every finalized invoice of the month :period_start that has none yet
-- (one statement, under the collection lock; UNIQUE (invoice_id, organisation_id), the organisation being
-- the invoice's, makes a concurrent claim a no-op).
-- The amount is what the invoice still has due (billing.invoice_balances). Per invoice:
--   nothing due                                  -> nothing_due, no provider call;
--   Stripe, a customer id, Stripe configured     -> pending PaymentIntent;
--   Razorpay, Razorpay configured                -> pending Payment Link, expiring after :link_days;
--   anything else                                -> skipped with the reason (the customer is asked to pay).
WITH due AS (
    SELECT b.invoice_id, b.organisation_id, b.number, b.currency, GREATEST(b.balance_minor, 0) AS amount_minor,
           i.period_start, o.provider, o.provider_customer_id
    FROM billing.invoice_balances b
    JOIN billing.invoices i ON i.invoice_id = b.invoice_id
    JOIN billing.organisations o ON o.organisation_id = b.organisation_id
    WHERE i.period_start = CAST(:period_start AS date)
      AND NOT EXISTS (SELECT 1 FROM billing.collection_attempts c WHERE c.invoice_id = b.invoice_id)
),
decided AS (
    SELECT d.*,
           CASE WHEN d.amount_minor = 0 THEN 'none'
                WHEN d.provider = 'stripe' AND d.provider_customer_id IS NOT NULL
                     AND CAST(:stripe_enabled AS boolean) THEN 'payment_intent'
                WHEN d.provider = 'razorpay' AND CAST(:razorpay_enabled AS boolean) THEN 'payment_link'
                ELSE 'none' END AS method
    FROM due d
)
INSERT INTO billing.collection_attempts (invoice_id, organisation_id, period_start, number, provider, method,
    idempotency_key, provider_customer_id, amount_minor, currency, status, link_expire_by, claimed_at,
    claimed_by, error_code, error_message, completed_at)
SELECT invoice_id, organisation_id, period_start, number, provider, method, 'collect:' || invoice_id,
       provider_customer_id, amount_minor, currency,
       CASE WHEN amount_minor = 0 THEN 'nothing_due' WHEN method = 'none' THEN 'skipped' ELSE 'pending' END,
       CASE WHEN method = 'payment_link'
            THEN date_trunc('second', CAST(:now AS timestamptz)) + make_interval(days => CAST(:link_days AS integer))
       END,
       CAST(:now AS timestamptz), CAST(:actor AS text),
       CASE WHEN method = 'none' AND amount_minor > 0 THEN 'not_collectable' END,
       CASE WHEN method = 'none' AND amount_minor > 0 THEN
           CASE WHEN provider = 'stripe' AND provider_customer_id IS NULL THEN 'no Stripe customer id for the organisation'
                WHEN provider = 'stripe' THEN 'STRIPE_API_KEY is not set: the invoice cannot be charged'
                WHEN provider = 'razorpay' THEN 'RAZORPAY_KEY_ID/RAZORPAY_KEY_SECRET are not set: no payment link'
                ELSE 'the organisation has no payment provider: the customer is asked to pay' END
       END,
       CASE WHEN method = 'none' THEN CAST(:now AS timestamptz) END
FROM decided
ON CONFLICT DO NOTHING
RETURNING collection_id, invoice_id, organisation_id, number, provider, method, idempotency_key,
          provider_customer_id, amount_minor, currency, status, link_expire_by, claimed_at, error_message
