-- lines_match_plan: every billed metric has a charge in the organisation's plan version, and every
-- charge of that version has its line; the draft's plan version is the organisation's current one.
SELECT i.organisation_id, l.metric,
       CASE WHEN c.metric_code IS NULL
            THEN format('line for %s, which plan %s v%s does not charge', l.metric, i.plan_code, i.plan_version)
            ELSE format('line for %s priced with model %s, the plan''s charge is %s', l.metric, l.model, c.model)
       END AS reason
FROM billing.invoices i
JOIN billing.invoice_lines l ON l.invoice_id = i.invoice_id AND l.kind = 'usage'
LEFT JOIN billing.plan_charges c ON c.plan_id = i.plan_id AND c.metric_code = l.metric
WHERE i.build_id = :build_id AND (c.metric_code IS NULL OR c.model IS DISTINCT FROM l.model)
UNION ALL
SELECT i.organisation_id, c.metric_code,
       format('plan %s v%s charges %s but the draft has no line for it', i.plan_code, i.plan_version, c.metric_code)
FROM billing.invoices i
JOIN billing.plan_charges c ON c.plan_id = i.plan_id
WHERE i.build_id = :build_id
  AND NOT EXISTS (SELECT 1 FROM billing.invoice_lines l
                  WHERE l.invoice_id = i.invoice_id AND l.kind = 'usage' AND l.metric = c.metric_code)
UNION ALL
SELECT i.organisation_id, NULL,
       format('draft priced with plan %s v%s (plan_id %s), the organisation is now on plan_id %s',
              i.plan_code, i.plan_version, i.plan_id, o.plan_id)
FROM billing.invoices i
JOIN billing.organisations o ON o.organisation_id = i.organisation_id
WHERE i.build_id = :build_id AND o.plan_id <> i.plan_id
ORDER BY 1, 2
