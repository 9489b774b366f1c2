-- Months invoicing has closed (billing.invoice_periods: its drafts were finalized).
SELECT period_start
FROM billing.invoice_periods
WHERE period_start >= :first_month
  AND period_start <= :last_month
