-- The provider's answers (:results, a JSON array). A pending attempt becomes succeeded or failed; one
-- whose outcome is still unknown (network error, provider error) stays pending with the error, to be
-- retried with the same idempotency key.
WITH r AS (
    SELECT * FROM jsonb_to_recordset(CAST(:results AS jsonb)) AS r(
        attempt_id bigint, status text, provider_object_id text, provider_charge_id text,
        error_code text, error_message text)
)
UPDATE billing.dunning_attempts a
SET status = r.status,
    provider_object_id = COALESCE(r.provider_object_id, a.provider_object_id),
    provider_charge_id = COALESCE(r.provider_charge_id, a.provider_charge_id),
    error_code = r.error_code,
    error_message = r.error_message,
    completed_at = CASE WHEN r.status <> 'pending' THEN CAST(:now AS timestamptz) END
FROM r
WHERE a.attempt_id = r.attempt_id AND a.status = 'pending'
RETURNING a.attempt_id, a.invoice_id, a.organisation_id, a.attempt, a.status, a.amount_minor, a.currency,
          a.idempotency_key, a.error_code, a.error_message, a.provider_object_id,
          (SELECT number FROM billing.invoices i WHERE i.invoice_id = a.invoice_id) AS number
