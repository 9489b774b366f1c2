-- Apply a set of provider observations (:rows, a JSON array) to billing.payments in one statement.
-- One row per provider object; a state is applied only when it ranks higher than the one held
-- (states.py), the refunded amount only grows, references fill in once, the amount is never
-- rewritten (reconciliation reports a difference instead). Each new object and each change of state
-- or refunded amount gets an audit row. The caller holds the payments advisory lock.
WITH obs AS (
    SELECT o.*
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS o(
        seq integer, provider text, object_type text, object_id text, parent_object_id text,
        provider_customer_id text, claimed_organisation_id text, invoice_ref text, amount_minor bigint,
        amount_refunded_minor bigint, currency text, fee_minor bigint, status text, status_rank integer,
        provider_status text, created_at bigint, raw jsonb, event_id text, webhook_at timestamptz)
),
-- per object, its most advanced observation (the earliest among equals), the largest refunded amount
-- and the first webhook that told us about it
best AS (
    SELECT DISTINCT ON (provider, object_id) o.*,
           max(o.amount_refunded_minor) OVER w AS refunded,
           min(o.webhook_at) OVER w AS first_webhook_at
    FROM obs o
    WINDOW w AS (PARTITION BY o.provider, o.object_id)
    ORDER BY o.provider, o.object_id, o.status_rank DESC, o.seq
),
customers AS (
    SELECT provider, provider_customer_id, min(organisation_id) AS organisation_id
    FROM billing.organisations WHERE provider_customer_id IS NOT NULL
    GROUP BY provider, provider_customer_id
),
-- the organisation: named in metadata/notes, else the provider customer's, else the parent object's
-- (a refund names no customer: its charge or payment does)
resolved AS (
    SELECT b.*, COALESCE(claimed.organisation_id, c.organisation_id, parent.organisation_id) AS organisation_id
    FROM best b
    LEFT JOIN billing.organisations claimed ON claimed.organisation_id = b.claimed_organisation_id
    LEFT JOIN customers c ON c.provider = b.provider AND c.provider_customer_id = b.provider_customer_id
    LEFT JOIN billing.payments parent ON parent.provider = b.provider AND parent.object_id = b.parent_object_id
),
before AS (
    SELECT p.provider, p.object_id, p.status, p.amount_refunded_minor
    FROM billing.payments p JOIN best b ON b.provider = p.provider AND b.object_id = p.object_id
),
upserted AS (
    INSERT INTO billing.payments AS p (
        provider, object_type, object_id, parent_object_id, organisation_id, provider_customer_id,
        invoice_ref, amount_minor, amount_refunded_minor, currency, fee_minor, status, status_rank,
        provider_status, provider_created_at, first_seen_via, webhook_seen_at, last_event_id, raw)
    SELECT provider, object_type, object_id, parent_object_id, organisation_id, provider_customer_id,
           invoice_ref, amount_minor, refunded, currency, fee_minor, status, status_rank,
           provider_status, to_timestamp(created_at), CAST(:via AS text), first_webhook_at, event_id, raw
    FROM resolved
    ON CONFLICT (provider, object_id) DO UPDATE SET
        status = CASE WHEN EXCLUDED.status_rank > p.status_rank THEN EXCLUDED.status ELSE p.status END,
        provider_status = CASE WHEN EXCLUDED.status_rank > p.status_rank
                               THEN EXCLUDED.provider_status ELSE p.provider_status END,
        raw = CASE WHEN EXCLUDED.status_rank > p.status_rank
                     OR EXCLUDED.amount_refunded_minor > p.amount_refunded_minor
                   THEN EXCLUDED.raw ELSE p.raw END,
        status_rank = GREATEST(p.status_rank, EXCLUDED.status_rank),
        amount_refunded_minor = GREATEST(p.amount_refunded_minor, EXCLUDED.amount_refunded_minor),
        parent_object_id = COALESCE(p.parent_object_id, EXCLUDED.parent_object_id),
        organisation_id = COALESCE(p.organisation_id, EXCLUDED.organisation_id),
        provider_customer_id = COALESCE(p.provider_customer_id, EXCLUDED.provider_customer_id),
        invoice_ref = COALESCE(p.invoice_ref, EXCLUDED.invoice_ref),
        fee_minor = COALESCE(EXCLUDED.fee_minor, p.fee_minor),
        webhook_seen_at = COALESCE(p.webhook_seen_at, EXCLUDED.webhook_seen_at),
        last_event_id = COALESCE(EXCLUDED.last_event_id, p.last_event_id),
        updated_at = now()
    WHERE EXCLUDED.status_rank > p.status_rank
       OR EXCLUDED.amount_refunded_minor > p.amount_refunded_minor
       OR (p.webhook_seen_at IS NULL AND EXCLUDED.webhook_seen_at IS NOT NULL)
       OR (p.parent_object_id IS NULL AND EXCLUDED.parent_object_id IS NOT NULL)
       OR (p.organisation_id IS NULL AND EXCLUDED.organisation_id IS NOT NULL)
       OR (p.invoice_ref IS NULL AND EXCLUDED.invoice_ref IS NOT NULL)
       OR (EXCLUDED.fee_minor IS NOT NULL AND EXCLUDED.fee_minor IS DISTINCT FROM p.fee_minor)
    RETURNING p.provider, p.object_id, p.status, p.amount_refunded_minor
),
audited AS (
    INSERT INTO billing.audit_log (entity_type, entity_id, action, from_state, to_state, actor, detail)
    SELECT 'payment', u.provider || ':' || u.object_id,
           CASE WHEN b.object_id IS NULL THEN 'payment_recorded' ELSE 'payment_updated' END,
           b.status, u.status, CAST(:actor AS text),
           jsonb_build_object('via', CAST(:via AS text), 'event_id', r.event_id,
                              'amount_refunded_minor', u.amount_refunded_minor)
    FROM upserted u
    JOIN best r ON r.provider = u.provider AND r.object_id = u.object_id
    LEFT JOIN before b ON b.provider = u.provider AND b.object_id = u.object_id
    WHERE b.object_id IS NULL OR b.status <> u.status OR b.amount_refunded_minor <> u.amount_refunded_minor
    RETURNING action
)
SELECT count(*) FILTER (WHERE action = 'payment_recorded') AS recorded,
       count(*) FILTER (WHERE action = 'payment_updated') AS updated
FROM audited
