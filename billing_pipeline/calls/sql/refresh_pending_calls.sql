-- Calls not charged yet take the provider's latest state (a cost that has settled since the webhook).
-- A charged call keeps the cost it was charged; a later difference is an amount_mismatch finding.
UPDATE billing.calls c
SET status = v.status, ended_reason = v.ended_reason, ended_at = v.ended_at,
    provider_updated_at = v.updated_at, cost_usd = v.cost_usd, cost_minor = v.cost_minor,
    cost_breakdown = COALESCE(v.raw -> 'costBreakdown', c.cost_breakdown), updated_at = now()
FROM billing.vapi_calls v
WHERE v.call_id = c.call_id
  AND c.charge_status = 'pending'
  AND v.created_at >= :start AND v.created_at < :end
  AND (c.status, c.ended_at, c.cost_usd) IS DISTINCT FROM (v.status, v.ended_at, v.cost_usd)
