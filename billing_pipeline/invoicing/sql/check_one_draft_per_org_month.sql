-- one_draft_per_org_month: at most one invoice (not void) per organisation and month, every draft of
-- the month from the build being checked, and a draft for each organisation that should have one
-- (usage of a charged metric, or a minimum commitment and the organisation existed that month).
SELECT i.organisation_id,
       format('%s invoices for the month (%s)', count(*), string_agg(i.invoice_id::text, ', ' ORDER BY i.invoice_id))
           AS reason
FROM billing.invoices i
WHERE i.period_start = :period_start AND i.status <> 'void'
GROUP BY i.organisation_id
HAVING count(*) > 1
UNION ALL
SELECT i.organisation_id, format('draft %s is from another build than %s', i.invoice_id, :build_id)
FROM billing.invoices i
WHERE i.period_start = :period_start AND i.status = 'draft' AND i.build_id <> :build_id
UNION ALL
SELECT o.organisation_id,
       CASE WHEN EXISTS (SELECT 1 FROM usage.usage_period u
                         JOIN billing.plan_charges c ON c.plan_id = o.plan_id AND c.metric_code = u.metric
                         WHERE u.organisation_id = o.organisation_id AND u.period_start = :period_start)
            THEN 'usage of a charged metric but no draft'
            ELSE 'minimum commitment but no draft'
       END
FROM billing.organisations o
JOIN billing.plans p ON p.plan_id = o.plan_id
WHERE NOT EXISTS (SELECT 1 FROM billing.invoices i
                  WHERE i.organisation_id = o.organisation_id AND i.period_start = :period_start
                    AND i.status <> 'void')
  AND (EXISTS (SELECT 1 FROM usage.usage_period u
               JOIN billing.plan_charges c ON c.plan_id = o.plan_id AND c.metric_code = u.metric
               WHERE u.organisation_id = o.organisation_id AND u.period_start = :period_start)
       OR (coalesce(p.minimum_commitment, 0) > 0 AND o.created_at < :period_end_ts))
ORDER BY 1
