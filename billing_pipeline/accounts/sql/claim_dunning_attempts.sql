-- Claim the retries due as of :as_of. The retry schedule (:retry_days, e.g. {1,3,5,7}) counts from the
-- start of the invoice's grace period (its first failed payment); slot k is attempt k. Per unpaid
-- invoice in a grace period (open or expired) the latest due slot is claimed, unless that slot or a later
-- one was already claimed or an attempt is still pending: one attempt per invoice and run, never a burst
-- of the slots that a stopped schedule missed. Retries stop when the invoice is paid.
-- An organisation that Stripe cannot charge off-session (another provider, no customer id, or Stripe not
-- configured: :stripe_enabled false) gets its attempt recorded as skipped, with the reason: it is asked
-- to pay instead.
WITH schedule AS (
    SELECT CAST(slot AS integer) AS attempt, days
    FROM unnest(CAST(:retry_days AS integer[])) WITH ORDINALITY AS s(days, slot)
),
due AS (
    SELECT DISTINCT ON (g.grace_id) g.grace_id, g.invoice_id, g.organisation_id, s.attempt,
           g.started_at + make_interval(hours => 24 * s.days) AS due_at
    FROM billing.grace_periods g
    JOIN schedule s ON g.started_at + make_interval(hours => 24 * s.days) <= :as_of
    WHERE g.status <> 'paid'
    ORDER BY g.grace_id, s.attempt DESC
),
claim AS (
    SELECT d.*, o.provider, o.provider_customer_id, b.balance_minor, b.currency,
           (CAST(:stripe_enabled AS boolean) AND o.provider = 'stripe' AND o.provider_customer_id IS NOT NULL)
               AS chargeable
    FROM due d
    JOIN billing.invoice_balances b ON b.invoice_id = d.invoice_id
    JOIN billing.organisations o ON o.organisation_id = d.organisation_id
    WHERE b.balance_minor > 0
      AND NOT EXISTS (SELECT 1 FROM billing.dunning_attempts a
                      WHERE a.invoice_id = d.invoice_id AND (a.attempt >= d.attempt OR a.status = 'pending'))
)
INSERT INTO billing.dunning_attempts (grace_id, invoice_id, organisation_id, attempt, idempotency_key, provider,
    provider_customer_id, amount_minor, currency, due_at, status, claimed_at, claimed_by, error_code,
    error_message, completed_at)
SELECT grace_id, invoice_id, organisation_id, attempt, 'dunning:' || invoice_id || ':' || attempt, provider,
       provider_customer_id, balance_minor, currency, due_at,
       CASE WHEN chargeable THEN 'pending' ELSE 'skipped' END,
       CAST(:now AS timestamptz), CAST(:actor AS text),
       CASE WHEN NOT chargeable THEN 'no_off_session_charge' END,
       CASE WHEN NOT chargeable THEN
           CASE WHEN provider = 'stripe' AND provider_customer_id IS NULL THEN 'no Stripe customer id for the organisation'
                WHEN provider = 'stripe' THEN 'STRIPE_API_KEY is not set: the payment cannot be retried'
                ELSE provider || ': payments are not retried server-side; the customer is asked to pay' END
       END,
       CASE WHEN NOT chargeable THEN CAST(:now AS timestamptz) END
FROM claim
ON CONFLICT DO NOTHING
RETURNING attempt_id, invoice_id, organisation_id, attempt, status, amount_minor, currency, idempotency_key,
          error_message, (SELECT number FROM billing.invoices i WHERE i.invoice_id = dunning_attempts.invoice_id) AS number
