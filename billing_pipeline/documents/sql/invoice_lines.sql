-- The lines of the invoices :ids, in a stable printing order, with the metric's name from the catalog.
SELECT l.invoice_id, l.kind, l.metric, m.name AS metric_name, l.units, l.amount_unrounded, l.amount_minor,
       l.original_period_start
FROM billing.invoice_lines l
LEFT JOIN billing.billable_metrics m ON m.code = l.metric
WHERE l.invoice_id = ANY(CAST(:ids AS bigint[]))
ORDER BY l.invoice_id, l.kind = 'commitment_true_up', l.kind = 'late_usage', l.metric, l.original_period_start, l.line_id
