-- The window's findings in recon.discrepancies (the caller deleted this asset's rows for its days).
-- missing_call: a call only GET /call had when reconciliation ran (reconciled = true), stable on reruns;
-- amount_mismatch: our recorded (charged) cost differs from Vapi's current cost;
-- missing_at_provider: a call we have (from a webhook) that GET /call did not return.
INSERT INTO recon.discrepancies (recon_date, source, kind, provider, organisation_id, reference,
                                 internal_amount_minor, provider_amount_minor, currency, detail)
SELECT (c.created_at AT TIME ZONE 'UTC')::date, 'call_reconciliation', 'missing_call', 'vapi', c.organisation_id,
       c.call_id, c.charged_minor, v.cost_minor, 'USD',
       'no end-of-call webhook had been applied; recovered from GET /call, '
       || CASE c.charge_status
              WHEN 'charged' THEN format('charged %s USD cents', c.charged_minor)
              WHEN 'pending' THEN 'not charged yet (the call has not ended or its cost has not settled)'
              ELSE format('not charged: %s', c.charge_detail) END
       || CASE WHEN c.webhook_received_at IS NOT NULL
               THEN format('; its webhook arrived later, at %s', c.webhook_received_at) ELSE '' END
FROM billing.calls c
LEFT JOIN billing.vapi_calls v USING (call_id)
WHERE c.reconciled AND c.created_at >= :start AND c.created_at < :end
UNION ALL
SELECT (c.created_at AT TIME ZONE 'UTC')::date, 'call_reconciliation', 'amount_mismatch', 'vapi', c.organisation_id,
       c.call_id, c.cost_minor, v.cost_minor, 'USD',
       format('cost %s USD in billing.calls (%s), %s USD at Vapi', c.cost_usd, c.charge_status, v.cost_usd)
FROM billing.calls c
JOIN billing.vapi_calls v USING (call_id)
WHERE c.created_at >= :start AND c.created_at < :end
  AND v.cost_minor IS NOT NULL AND c.cost_minor IS DISTINCT FROM v.cost_minor
UNION ALL
SELECT (c.created_at AT TIME ZONE 'UTC')::date, 'call_reconciliation', 'missing_at_provider', 'vapi',
       c.organisation_id, c.call_id, c.cost_minor, NULL, 'USD',
       format('billing.calls has the call (%s) but GET /call did not return it',
              CASE WHEN c.webhook_received_at IS NOT NULL THEN 'from its end-of-call webhook' ELSE 'recovered earlier' END)
FROM billing.calls c
WHERE c.created_at >= :start AND c.created_at < :end
  AND NOT EXISTS (SELECT 1 FROM billing.vapi_calls v WHERE v.call_id = c.call_id)
