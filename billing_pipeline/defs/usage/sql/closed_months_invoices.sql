-- Months with a finalized invoice (for any organisation). Any status past draft counts (finalized,
-- and whatever may follow it); void does not.
SELECT DISTINCT period_start
FROM billing.invoices
WHERE status NOT IN ('draft', 'void')
  AND period_start >= :first_month
  AND period_start <= :last_month
