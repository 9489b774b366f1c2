-- Trials over as of :as_of: the organisation continues on its plan (active) when it can be charged
-- (a provider and a customer id at it), and is downgraded otherwise. A trial ends at trial_ends_at,
-- or, without one, trial_days (of its current plan version) after the organisation was created.
WITH ended AS (
    SELECT o.organisation_id,
           COALESCE(o.trial_ends_at, o.created_at + make_interval(hours => 24 * p.trial_days)) AS trial_ended_at,
           (o.provider <> 'none' AND o.provider_customer_id IS NOT NULL) AS can_pay
    FROM billing.organisations o
    JOIN billing.plans p ON p.plan_id = o.plan_id
    WHERE o.status = 'trialing'
      AND COALESCE(o.trial_ends_at, o.created_at + make_interval(hours => 24 * p.trial_days)) <= :as_of
    FOR UPDATE OF o
)
UPDATE billing.organisations o
SET status = CASE WHEN e.can_pay THEN 'active' ELSE 'downgraded' END, updated_at = now()
FROM ended e
WHERE o.organisation_id = e.organisation_id
RETURNING o.organisation_id, o.name, o.plan_code, o.status, e.trial_ended_at, e.can_pay
