-- The status that an organisation's grace periods give it: restricted while one expired unpaid, grace
-- while one is open, active otherwise. Only organisations in active, grace or restricted are moved
-- (a trialing or downgraded organisation keeps its status), and only those whose status changes.
WITH wanted AS (
    SELECT o.organisation_id, o.status AS from_status,
           CASE WHEN EXISTS (SELECT 1 FROM billing.grace_periods g
                             WHERE g.organisation_id = o.organisation_id AND g.status = 'expired') THEN 'restricted'
                WHEN EXISTS (SELECT 1 FROM billing.grace_periods g
                             WHERE g.organisation_id = o.organisation_id AND g.status = 'open') THEN 'grace'
                ELSE 'active' END AS to_status
    FROM billing.organisations o
    WHERE o.status IN ('grace', 'restricted')
       OR (o.status = 'active' AND EXISTS (SELECT 1 FROM billing.grace_periods g
                                           WHERE g.organisation_id = o.organisation_id AND g.status <> 'paid'))
    FOR UPDATE OF o
)
UPDATE billing.organisations o
SET status = w.to_status, updated_at = now()
FROM wanted w
WHERE o.organisation_id = w.organisation_id AND w.to_status <> w.from_status
RETURNING o.organisation_id, w.from_status, w.to_status
