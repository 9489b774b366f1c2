-- Attempts to send to the provider: the ones just claimed and any left pending by a run that stopped
-- between its provider call and the recording of the result.
SELECT a.attempt_id, a.invoice_id, i.number, a.organisation_id, a.attempt, a.idempotency_key,
       a.provider_customer_id, a.amount_minor, a.currency, a.claimed_at
FROM billing.dunning_attempts a
JOIN billing.invoices i ON i.invoice_id = a.invoice_id
WHERE a.status = 'pending'
ORDER BY a.attempt_id
