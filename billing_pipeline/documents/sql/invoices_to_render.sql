-- Finalized invoices with no document yet (of the month :period_start, or every month when it is
-- NULL; or the one :number), with their customer from the catalog.
SELECT i.invoice_id, i.number, i.organisation_id, o.name AS customer_name, o.provider, o.provider_customer_id,
       o.billing_details,
       i.period_start, i.period_end, i.currency, i.finalized_at, i.plan_code, i.plan_version, i.tax_rate,
       i.subtotal_minor, i.discount_minor, i.tax_minor, i.credits_applied_minor, i.total_minor,
       i.discounts_applied
FROM billing.invoices i
JOIN billing.organisations o ON o.organisation_id = i.organisation_id
WHERE i.status = 'finalized'
  AND (CAST(:period_start AS date) IS NULL OR i.period_start = :period_start)
  AND (CAST(:number AS text) IS NULL OR i.number = :number)
  AND NOT EXISTS (SELECT 1 FROM billing.invoice_documents d
                  WHERE d.document_kind = 'invoice' AND d.number = i.number)
ORDER BY i.number
