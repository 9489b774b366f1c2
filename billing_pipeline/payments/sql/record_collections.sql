-- The providers' answers (:results, a JSON array). A pending collection becomes succeeded, failed or
-- link_sent; one whose outcome is still unknown (network or provider error) stays pending with the
-- error, to be repeated with the same request.
WITH r AS (
    SELECT * FROM jsonb_to_recordset(CAST(:results AS jsonb)) AS r(
        attempt_id bigint, status text, provider_object_id text, provider_charge_id text, link_url text,
        error_code text, error_message text)
)
UPDATE billing.collection_attempts c
SET status = r.status,
    provider_object_id = COALESCE(r.provider_object_id, c.provider_object_id),
    provider_charge_id = COALESCE(r.provider_charge_id, c.provider_charge_id),
    link_url = COALESCE(r.link_url, c.link_url),
    error_code = r.error_code,
    error_message = r.error_message,
    completed_at = CASE WHEN r.status <> 'pending' THEN CAST(:now AS timestamptz) END
FROM r
WHERE c.collection_id = r.attempt_id AND c.status = 'pending'
RETURNING c.collection_id, c.invoice_id, c.organisation_id, c.number, c.provider, c.method, c.status,
          c.amount_minor, c.currency, c.idempotency_key, c.provider_object_id, c.link_url, c.link_expire_by,
          c.error_code, c.error_message
