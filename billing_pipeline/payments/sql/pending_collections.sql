-- The month's collections still to send: just claimed, or left pending by a run that stopped after
-- calling the provider (sent again with the same request).
SELECT collection_id, invoice_id, organisation_id, number, provider, method, idempotency_key,
       provider_customer_id, amount_minor, currency, link_expire_by, claimed_at
FROM billing.collection_attempts
WHERE status = 'pending' AND period_start = CAST(:period_start AS date)
ORDER BY collection_id
