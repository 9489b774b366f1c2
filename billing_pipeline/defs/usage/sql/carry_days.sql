-- The first aggregated day of each month from :from_date on: aggregating it again recomputes that
-- month's usage_period, whose weighted_sum levels carry every earlier month's changes.
SELECT date_trunc('month', usage_date)::date AS month, min(usage_date) AS first_day
FROM usage.aggregated_days
WHERE usage_date >= :from_date
GROUP BY 1
ORDER BY 1
