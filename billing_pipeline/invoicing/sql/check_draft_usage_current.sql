-- usage_matches_events, part 2: each draft usage line has the units the usage model has now (a draft
-- built from an older state of the model is stale).
SELECT i.organisation_id, l.metric, l.units AS draft_units, coalesce(u.units, 0) AS usage_units,
       'draft line units differ from the usage model (the draft is stale)' AS reason
FROM billing.invoices i
JOIN billing.invoice_lines l ON l.invoice_id = i.invoice_id AND l.kind = 'usage'
LEFT JOIN usage.usage_period u
  ON u.organisation_id = i.organisation_id AND u.metric = l.metric AND u.period_start = i.period_start
WHERE i.build_id = :build_id AND l.units IS DISTINCT FROM coalesce(u.units, 0)
ORDER BY i.organisation_id, l.metric
