-- The provider's current view of each listed object (:rows, a JSON array of observations), by id.
INSERT INTO billing.provider_records AS r (
    provider, object_type, object_id, parent_object_id, provider_customer_id, invoice_ref, amount_minor,
    amount_refunded_minor, currency, fee_minor, status, provider_status, created_at, raw)
SELECT provider, object_type, object_id, parent_object_id, provider_customer_id, invoice_ref, amount_minor,
       amount_refunded_minor, currency, fee_minor, status, provider_status, to_timestamp(created_at), raw
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS o(
    provider text, object_type text, object_id text, parent_object_id text, provider_customer_id text,
    invoice_ref text, amount_minor bigint, amount_refunded_minor bigint, currency text, fee_minor bigint,
    status text, provider_status text, created_at bigint, raw jsonb)
ON CONFLICT (provider, object_id) DO UPDATE SET
    object_type = EXCLUDED.object_type, parent_object_id = EXCLUDED.parent_object_id,
    provider_customer_id = EXCLUDED.provider_customer_id, invoice_ref = EXCLUDED.invoice_ref,
    amount_minor = EXCLUDED.amount_minor, amount_refunded_minor = EXCLUDED.amount_refunded_minor,
    currency = EXCLUDED.currency, fee_minor = EXCLUDED.fee_minor, status = EXCLUDED.status,
    provider_status = EXCLUDED.provider_status, created_at = EXCLUDED.created_at, raw = EXCLUDED.raw,
    synced_at = now()
