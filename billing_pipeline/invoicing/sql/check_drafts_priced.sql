-- drafts_priced: charges or invoice totals that could not be priced (the reasons pricing gave).
SELECT i.organisation_id, p ->> 'metric' AS metric, p ->> 'reason' AS reason
FROM billing.invoices i
CROSS JOIN LATERAL jsonb_array_elements(i.problems) p
WHERE i.build_id = :build_id
ORDER BY 1, 2
