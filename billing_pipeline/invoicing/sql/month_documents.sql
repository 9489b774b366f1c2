-- Finance's export of a month (invoice export): every issued invoice of :period_start (finalized or
-- void, with its void reason and replacement) and every credit note against them, one row per document,
-- with what was credited, refunded, paid and is still due. Amounts in minor units of `currency`.
SELECT 'invoice' AS document, i.number, i.number AS invoice_number, i.organisation_id, i.status,
       i.finalized_at AS issued_at, i.currency, i.total_minor,
       COALESCE(b.credited_minor, 0) AS credited_minor, COALESCE(b.refunded_minor, 0) AS refunded_minor,
       COALESCE(b.paid_minor, 0) AS paid_minor,
       CASE WHEN i.status = 'void' THEN 0 ELSE COALESCE(b.balance_minor, 0) END AS due_minor,
       NULL::text AS refund_method, v.reason, r.number AS replaced_by
FROM billing.invoices i
LEFT JOIN billing.invoice_balances b ON b.invoice_id = i.invoice_id
LEFT JOIN billing.invoice_voids v ON v.invoice_id = i.invoice_id
LEFT JOIN billing.invoice_replacements x ON x.voided_invoice_id = i.invoice_id
LEFT JOIN billing.invoices r ON r.invoice_id = x.replacement_invoice_id
WHERE i.period_start = CAST(:period_start AS date) AND i.status <> 'draft'
UNION ALL
SELECT 'credit_note', c.number, i.number, c.organisation_id, COALESCE('refund ' || f.status, 'issued'),
       c.issued_at, c.currency, -c.amount_minor, c.amount_minor, c.refund_minor, 0, -c.applied_minor,
       c.refund_method, c.reason, NULL
FROM billing.credit_notes c
JOIN billing.invoices i ON i.invoice_id = c.invoice_id
LEFT JOIN billing.refunds f ON f.credit_note_id = c.credit_note_id
WHERE i.period_start = CAST(:period_start AS date)
ORDER BY invoice_number, document DESC, number
