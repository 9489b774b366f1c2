-- total_jump (warn): a draft whose total is more than :factor times, or less than 1/:factor of, the
-- average of the organisation's last :history finalized invoices in the same currency, each as billed
-- after its credit notes (void invoices are not history: a replacement, if any, is).
WITH history AS (
    SELECT i.organisation_id, i.currency, i.total_minor - COALESCE(c.credited_minor, 0) AS total_minor,
           row_number() OVER (PARTITION BY i.organisation_id, i.currency ORDER BY i.period_start DESC) AS n
    FROM billing.invoices i
    LEFT JOIN billing.invoice_credits c ON c.invoice_id = i.invoice_id
    WHERE i.status = 'finalized' AND i.period_start < :period_start
),
baseline AS (
    SELECT organisation_id, currency, avg(total_minor) AS average, count(*) AS invoices
    FROM history WHERE n <= :history
    GROUP BY organisation_id, currency
)
SELECT d.organisation_id,
       format('total %s %s against an average of %s over the last %s invoice(s)',
              d.total_minor, d.currency, round(b.average), b.invoices) AS reason,
       d.total_minor, round(b.average) AS average_minor
FROM billing.invoices d
JOIN baseline b ON b.organisation_id = d.organisation_id AND b.currency = d.currency
WHERE d.build_id = :build_id
  AND (d.total_minor > :factor * b.average OR d.total_minor * :factor < b.average)
ORDER BY abs(d.total_minor - b.average) DESC
