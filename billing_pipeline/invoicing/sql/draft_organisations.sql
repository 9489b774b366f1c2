-- Every organisation (or the one asked for) with its current plan version, the plan's charges, its
-- discounts and tax rate, and the prepaid credits that other invoices have not consumed yet.
-- This month's drafts are about to be replaced, so their credits count as available again.
-- JSON comes back as text: the caller parses numbers as Decimal, never float.
WITH charges AS (
    SELECT c.plan_id,
           jsonb_agg(jsonb_build_object('metric', c.metric_code, 'aggregation', m.aggregation,
                                        'field_name', m.field_name, 'model', c.model,
                                        'properties', c.properties)
                     ORDER BY c.metric_code) AS charges
    FROM billing.plan_charges c
    JOIN billing.billable_metrics m ON m.code = c.metric_code
    GROUP BY c.plan_id
),
credits_used AS (
    SELECT organisation_id, currency, sum(credits_applied_minor) AS used
    FROM billing.invoices
    WHERE status <> 'void' AND NOT (status = 'draft' AND period_start = :period_start)
    GROUP BY organisation_id, currency
)
SELECT o.organisation_id,
       o.currency,
       o.tax_rate,
       o.discounts::text AS discounts,
       o.created_at < :period_end_ts AS existed_in_period,
       greatest(o.prepaid_credits_minor - coalesce(cu.used, 0), 0) AS credits_available_minor,
       p.plan_id,
       p.code AS plan_code,
       p.version AS plan_version,
       p.minimum_commitment,
       p.definition::text AS plan_definition,
       coalesce(ch.charges, '[]'::jsonb)::text AS charges
FROM billing.organisations o
JOIN billing.plans p ON p.plan_id = o.plan_id
LEFT JOIN charges ch ON ch.plan_id = p.plan_id
LEFT JOIN credits_used cu ON cu.organisation_id = o.organisation_id AND cu.currency = o.currency
WHERE CAST(:organisation_id AS text) IS NULL OR o.organisation_id = CAST(:organisation_id AS text)
ORDER BY o.organisation_id
