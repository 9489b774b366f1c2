-- Allocate captured money to finalized invoices (billing.invoice_payments, append-only deltas) and
-- audit each invoice whose paid amount changed. One statement:
--   1. a payment already allocated follows its current net amount (a refund allocates a negative delta);
--   2. a new payment naming an invoice (invoice_id or number, on itself or on its payment intent /
--      order) in the invoice's currency is allocated to it, whatever its amount (partial, over);
--   3. a new payment naming no invoice goes to an invoice of its organisation with no allocation yet,
--      same currency, total equal to the payment, for a period with period_start <= payment time
--      < period_end + 45 days; the k-th such payment (oldest first) takes the k-th such invoice
--      (oldest period first). Anything else stays unallocated: reconciliation reports it.
-- It reads only the payments in billing.settlement_queue (sql/0093_settlement_queue.sql: those whose
-- payment, parent or credit-note refunds changed since they were last settled, and captured money no
-- rule has placed yet), the allocations of those payments, and the finalized invoices they name or
-- share an organisation, currency and amount with: a day's settlement does not read the history. Rule 3
-- numbers payments and invoices within one (organisation, currency, amount), and every unallocated
-- payment of such a group is queued, so reading those groups whole gives what a pass over every payment
-- would. Afterwards it deletes the queue rows it read, except captured money a rule may still place.
WITH queued AS (
    SELECT payment_id, queued_seq FROM billing.settlement_queue
),
money_in AS (
    SELECT p.payment_id, p.currency, p.provider_created_at,
           COALESCE(p.organisation_id, parent.organisation_id) AS organisation_id,
           COALESCE(p.invoice_ref, parent.invoice_ref) AS invoice_ref,
           -- a refund that a credit note made is not taken off the payment: the credit note already
           -- lowered what the invoice asks for (billing.invoice_balances)
           CASE WHEN billing.holds_money(p.status)
                THEN p.amount_minor - LEAST(GREATEST(p.amount_refunded_minor - COALESCE(cn.refunded_minor, 0), 0),
                                            p.amount_minor) ELSE 0 END AS net_minor
    FROM queued q
    JOIN billing.payments p ON p.payment_id = q.payment_id
    LEFT JOIN billing.payments parent
           ON parent.provider = p.provider AND parent.object_id = p.parent_object_id
    LEFT JOIN LATERAL (SELECT sum(r.amount_minor) AS refunded_minor FROM billing.refunds r
                       WHERE r.payment_id = p.payment_id AND r.status <> 'failed') cn ON true
    WHERE (p.provider = 'stripe' AND p.object_type = 'charge')
       OR (p.provider = 'razorpay' AND p.object_type = 'payment')
),
allocated AS (
    SELECT a.payment_id, min(a.invoice_id) AS invoice_id, min(a.rule) AS rule,
           sum(a.amount_minor)::bigint AS allocated_minor
    FROM billing.invoice_payments a
    WHERE a.payment_id IN (SELECT payment_id FROM money_in)
    GROUP BY a.payment_id
),
adjusted AS (
    SELECT a.invoice_id, m.payment_id, m.net_minor - a.allocated_minor AS delta, m.currency, a.rule
    FROM money_in m JOIN allocated a ON a.payment_id = m.payment_id
),
unallocated AS (
    SELECT m.* FROM money_in m
    WHERE m.net_minor > 0 AND NOT EXISTS (SELECT 1 FROM allocated a WHERE a.payment_id = m.payment_id)
),
-- the finalized invoice a payment names, by number or by id (its canonical decimal text)
named AS (
    SELECT u.payment_id, i.invoice_id
    FROM unallocated u JOIN billing.invoices i ON i.number = u.invoice_ref
    WHERE i.status = 'finalized' AND i.currency = u.currency
    UNION ALL
    SELECT u.payment_id, i.invoice_id
    FROM unallocated u
    JOIN billing.invoices i
      ON i.invoice_id = CASE WHEN u.invoice_ref ~ '^[1-9][0-9]{0,17}$' THEN u.invoice_ref::bigint END
    WHERE i.status = 'finalized' AND i.currency = u.currency
),
by_reference AS (
    SELECT DISTINCT ON (u.payment_id) n.invoice_id, u.payment_id, u.net_minor AS delta, u.currency,
           'reference' AS rule
    FROM unallocated u JOIN named n ON n.payment_id = u.payment_id
    ORDER BY u.payment_id, n.invoice_id
),
unnamed AS (
    SELECT u.*, row_number() OVER (PARTITION BY u.organisation_id, u.currency, u.net_minor
                                   ORDER BY u.provider_created_at, u.payment_id) AS k
    FROM unallocated u
    WHERE u.invoice_ref IS NULL AND u.organisation_id IS NOT NULL
),
open_invoices AS (
    SELECT i.invoice_id, i.organisation_id, i.currency, i.total_minor, i.period_start, i.period_end,
           row_number() OVER (PARTITION BY i.organisation_id, i.currency, i.total_minor
                              ORDER BY i.period_start, i.invoice_id) AS k
    FROM billing.invoices i
    WHERE i.status = 'finalized'
      AND (i.organisation_id, i.currency, i.total_minor) IN (SELECT organisation_id, currency, net_minor FROM unnamed)
      AND NOT EXISTS (SELECT 1 FROM billing.invoice_payments a WHERE a.invoice_id = i.invoice_id)
      AND NOT EXISTS (SELECT 1 FROM by_reference b WHERE b.invoice_id = i.invoice_id)
),
by_rule AS (
    SELECT i.invoice_id, u.payment_id, u.net_minor AS delta, u.currency, 'customer_amount_window' AS rule
    FROM unnamed u
    JOIN open_invoices i ON i.organisation_id = u.organisation_id AND i.currency = u.currency
                        AND i.total_minor = u.net_minor AND i.k = u.k
    WHERE u.provider_created_at >= i.period_start AND u.provider_created_at < i.period_end + interval '45 days'
),
inserted AS (
    INSERT INTO billing.invoice_payments (invoice_id, payment_id, amount_minor, currency, rule, allocated_by)
    SELECT invoice_id, payment_id, delta, currency, rule, CAST(:actor AS text)
    FROM (SELECT * FROM adjusted UNION ALL SELECT * FROM by_reference UNION ALL SELECT * FROM by_rule) x
    WHERE delta <> 0
    RETURNING invoice_id, payment_id, amount_minor, rule
),
-- captured money still unplaced that names an invoice or an organisation stays queued
dequeued AS (
    DELETE FROM billing.settlement_queue q USING queued r
    WHERE q.payment_id = r.payment_id AND q.queued_seq = r.queued_seq
      AND NOT EXISTS (SELECT 1 FROM unallocated u
                      WHERE u.payment_id = r.payment_id
                        AND (u.invoice_ref IS NOT NULL OR u.organisation_id IS NOT NULL)
                        AND NOT EXISTS (SELECT 1 FROM inserted n WHERE n.payment_id = u.payment_id))
    RETURNING q.payment_id
),
paid_before AS (
    SELECT a.invoice_id, sum(a.amount_minor)::bigint AS paid FROM billing.invoice_payments a
    WHERE a.invoice_id IN (SELECT invoice_id FROM inserted)
    GROUP BY a.invoice_id
),
changed AS (
    SELECT n.invoice_id, i.number, i.total_minor, COALESCE(b.paid, 0) AS before_minor,
           COALESCE(b.paid, 0) + sum(n.amount_minor)::bigint AS after_minor,
           jsonb_agg(jsonb_build_object('payment_id', n.payment_id, 'amount_minor', n.amount_minor,
                                        'rule', n.rule)) AS allocations
    FROM inserted n
    JOIN billing.invoices i ON i.invoice_id = n.invoice_id
    LEFT JOIN paid_before b ON b.invoice_id = n.invoice_id
    GROUP BY n.invoice_id, i.number, i.total_minor, b.paid
),
audited AS (
    INSERT INTO billing.audit_log (entity_type, entity_id, action, from_state, to_state, actor, detail)
    SELECT 'invoice', invoice_id::text, 'payment_allocated',
           billing.settlement_state(total_minor, before_minor), billing.settlement_state(total_minor, after_minor),
           CAST(:actor AS text),
           jsonb_build_object('number', number, 'total_minor', total_minor, 'paid_before_minor', before_minor,
                              'paid_minor', after_minor, 'allocations', allocations)
    FROM changed
    RETURNING to_state
)
SELECT (SELECT count(*) FROM inserted) AS allocations,
       (SELECT count(*) FROM inserted WHERE rule = 'reference') AS by_reference,
       (SELECT count(*) FROM inserted WHERE rule = 'customer_amount_window') AS by_rule,
       (SELECT count(*) FROM audited) AS invoices_changed
