-- Trials still running at :as_of that end before :until (the end of the next UTC day): their reminder.
SELECT o.organisation_id, o.name, o.plan_code,
       COALESCE(o.trial_ends_at, o.created_at + make_interval(hours => 24 * p.trial_days)) AS trial_ends_at,
       (o.provider <> 'none' AND o.provider_customer_id IS NOT NULL) AS can_pay
FROM billing.organisations o
JOIN billing.plans p ON p.plan_id = o.plan_id
WHERE o.status = 'trialing'
  AND COALESCE(o.trial_ends_at, o.created_at + make_interval(hours => 24 * p.trial_days)) > :as_of
  AND COALESCE(o.trial_ends_at, o.created_at + make_interval(hours => 24 * p.trial_days)) < :until
ORDER BY o.organisation_id
