-- End-of-call reports into billing.calls, one row per call id (the caller dedupes the batch). A call
-- we do not have yet is inserted; a call the reconciliation recovered before its webhook came gets
-- webhook_received_at and, while its charge is still pending, the report's provider fields. A call
-- whose webhook was already applied is left alone and not returned: a replayed report changes nothing.
INSERT INTO billing.calls AS c (
    call_id, organisation_id, vapi_org_id, assistant_id, status, ended_reason, created_at, started_at,
    ended_at, provider_updated_at, cost_usd, cost_minor, cost_breakdown, metadata, reconciled,
    webhook_received_at, charge_status, charge_detail)
SELECT r.call_id, o.organisation_id, r.vapi_org_id, r.assistant_id, r.status, r.ended_reason, r.created_at,
       r.started_at, r.ended_at, r.provider_updated_at, r.cost_usd, r.cost_minor, CAST(r.cost_breakdown AS jsonb),
       CAST(r.metadata AS jsonb), false, r.received_at,
       CASE WHEN o.organisation_id IS NULL THEN 'unattributed' ELSE 'pending' END,
       CASE WHEN o.organisation_id IS NOT NULL THEN NULL
            WHEN r.claimed IS NULL THEN 'the call has no metadata.organisation_id'
            ELSE format('metadata.organisation_id %s is not a known organisation', r.claimed) END
FROM unnest(CAST(:call_id AS text[]), CAST(:claimed AS text[]), CAST(:vapi_org_id AS text[]),
            CAST(:assistant_id AS text[]), CAST(:status AS text[]), CAST(:ended_reason AS text[]),
            CAST(:created_at AS timestamptz[]), CAST(:started_at AS timestamptz[]), CAST(:ended_at AS timestamptz[]),
            CAST(:provider_updated_at AS timestamptz[]), CAST(:cost_usd AS numeric[]), CAST(:cost_minor AS bigint[]),
            CAST(:cost_breakdown AS text[]), CAST(:metadata AS text[]), CAST(:received_at AS timestamptz[]))
     AS r (call_id, claimed, vapi_org_id, assistant_id, status, ended_reason, created_at, started_at, ended_at,
           provider_updated_at, cost_usd, cost_minor, cost_breakdown, metadata, received_at)
LEFT JOIN billing.organisations o ON o.organisation_id = r.claimed
ORDER BY r.call_id
ON CONFLICT (call_id) DO UPDATE SET
    webhook_received_at = excluded.webhook_received_at,
    status = CASE WHEN c.charge_status = 'pending' THEN excluded.status ELSE c.status END,
    ended_reason = CASE WHEN c.charge_status = 'pending' THEN excluded.ended_reason ELSE c.ended_reason END,
    ended_at = CASE WHEN c.charge_status = 'pending' THEN excluded.ended_at ELSE c.ended_at END,
    provider_updated_at = CASE WHEN c.charge_status = 'pending' THEN excluded.provider_updated_at
                               ELSE c.provider_updated_at END,
    cost_usd = CASE WHEN c.charge_status = 'pending' THEN excluded.cost_usd ELSE c.cost_usd END,
    cost_minor = CASE WHEN c.charge_status = 'pending' THEN excluded.cost_minor ELSE c.cost_minor END,
    cost_breakdown = CASE WHEN c.charge_status = 'pending' THEN excluded.cost_breakdown ELSE c.cost_breakdown END,
    updated_at = now()
WHERE c.webhook_received_at IS NULL
RETURNING c.call_id, (c.xmax = 0) AS inserted, c.charge_status
