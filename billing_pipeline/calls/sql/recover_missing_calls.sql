-- Calls Vapi has for the window and billing.calls does not: the end-of-call webhook never came (or has
-- not been applied yet). Inserted with reconciled = true, attributed like a webhook call; charged next.
INSERT INTO billing.calls (
    call_id, organisation_id, vapi_org_id, assistant_id, status, ended_reason, created_at, started_at,
    ended_at, provider_updated_at, cost_usd, cost_minor, cost_breakdown, metadata, reconciled,
    charge_status, charge_detail)
SELECT v.call_id, o.organisation_id, v.vapi_org_id, v.raw ->> 'assistantId', v.status, v.ended_reason,
       v.created_at, v.started_at, v.ended_at, v.updated_at, v.cost_usd, v.cost_minor,
       COALESCE(v.raw -> 'costBreakdown', '{}'), COALESCE(v.raw -> 'metadata', '{}'), true,
       CASE WHEN o.organisation_id IS NULL THEN 'unattributed' ELSE 'pending' END,
       CASE WHEN o.organisation_id IS NOT NULL THEN NULL
            WHEN v.claimed_organisation_id IS NULL THEN 'the call has no metadata.organisation_id'
            ELSE format('metadata.organisation_id %s is not a known organisation', v.claimed_organisation_id) END
FROM billing.vapi_calls v
LEFT JOIN billing.organisations o ON o.organisation_id = v.claimed_organisation_id
WHERE v.created_at >= :start AND v.created_at < :end
  AND NOT EXISTS (SELECT 1 FROM billing.calls c WHERE c.call_id = v.call_id)
ORDER BY v.call_id  -- every path takes call rows in call id order
ON CONFLICT (call_id) DO NOTHING
