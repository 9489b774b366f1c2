-- Settlement reads only the payments it may have to allocate (issue 19: a day's work must not grow with
-- the history). billing.settlement_queue holds, per payment that receives money (a Stripe charge, a
-- Razorpay payment) and holds some (captured, partially or wholly refunded: settlement counts no other
-- status), the last time something settlement reads about it changed:
--   * the payment itself: its status, amounts, currency, time, organisation, invoice reference or
--     parent (statement triggers on billing.payments, over the statement's transition tables: one
--     set-based INSERT per statement, a COPY of a million payments included);
--   * its parent (a payment intent or order that names the invoice or organisation for it);
--   * its credit-note refunds (billing.refunds), which settlement does not take off the payment.
-- sql/settle_invoices.sql reads the queue, and afterwards deletes the rows it read whose payment needs
-- nothing more: allocated (a later change queues it again), nothing to allocate (not captured, or
-- refunded), or naming neither an invoice nor an organisation (no rule can place it). Captured money
-- that could still be allocated stays queued (an invoice it names, or of its organisation, amount and
-- window, may be finalized later): that backlog is exactly what reconciliation reports unallocated.
-- A row is deleted only if its queued_seq is still the one read, so a change committed meanwhile
-- (a credit-note refund, which does not take the payments lock) is not lost.
-- Kept out of Citus's distribution (docs/scaling.md): no organisation_id, no foreign key.
CREATE SEQUENCE billing.settlement_queue_seq;

CREATE TABLE billing.settlement_queue (
    payment_id  bigint PRIMARY KEY,
    queued_seq  bigint NOT NULL
);

-- the statuses whose payments settlement counts (sql/settle_invoices.sql's net amount)
CREATE FUNCTION billing.holds_money(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT status IN ('captured', 'partially_refunded', 'refunded') $$;

CREATE FUNCTION billing.queue_for_settlement(payment_ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO billing.settlement_queue (payment_id, queued_seq)
    SELECT p.payment_id, nextval('billing.settlement_queue_seq')
    FROM (SELECT DISTINCT unnest(payment_ids) AS payment_id) x
    JOIN billing.payments p ON p.payment_id = x.payment_id
    WHERE (p.provider, p.object_type) IN (('stripe', 'charge'), ('razorpay', 'payment'))
    ON CONFLICT (payment_id) DO UPDATE SET queued_seq = EXCLUDED.queued_seq
$$;

-- the changed rows themselves, and the payments whose parent a changed row is
CREATE FUNCTION billing.queue_changed_payments() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM billing.queue_for_settlement(ARRAY(
            SELECT n.payment_id FROM new_rows n WHERE billing.holds_money(n.status)
            UNION ALL
            SELECT c.payment_id FROM new_rows n
            JOIN billing.payments c ON c.provider = n.provider AND c.parent_object_id = n.object_id
            WHERE n.object_type IN ('payment_intent', 'order') AND billing.holds_money(c.status)));
    ELSE
        PERFORM billing.queue_for_settlement(ARRAY(
            WITH changed AS (
                SELECT n.*, o.status AS old_status
                FROM new_rows n JOIN old_rows o ON o.payment_id = n.payment_id
                WHERE (o.status, o.amount_minor, o.amount_refunded_minor, o.currency, o.provider_created_at,
                       o.organisation_id, o.invoice_ref, o.parent_object_id, o.object_id)
                      IS DISTINCT FROM
                      (n.status, n.amount_minor, n.amount_refunded_minor, n.currency, n.provider_created_at,
                       n.organisation_id, n.invoice_ref, n.parent_object_id, n.object_id)
            )
            SELECT payment_id FROM changed
            WHERE billing.holds_money(status) OR billing.holds_money(old_status)
            UNION ALL
            SELECT c.payment_id FROM changed n
            JOIN billing.payments c ON c.provider = n.provider AND c.parent_object_id = n.object_id
            WHERE n.object_type IN ('payment_intent', 'order') AND billing.holds_money(c.status)));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER payments_queue_inserted AFTER INSERT ON billing.payments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.queue_changed_payments();
CREATE TRIGGER payments_queue_updated AFTER UPDATE ON billing.payments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION billing.queue_changed_payments();

CREATE FUNCTION billing.queue_refunded_payments() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM billing.queue_for_settlement(ARRAY(
            SELECT payment_id FROM new_rows WHERE payment_id IS NOT NULL));
    ELSE
        PERFORM billing.queue_for_settlement(ARRAY(
            SELECT payment_id FROM new_rows WHERE payment_id IS NOT NULL
            UNION ALL
            SELECT payment_id FROM old_rows WHERE payment_id IS NOT NULL));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER refunds_queue_inserted AFTER INSERT ON billing.refunds
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION billing.queue_refunded_payments();
CREATE TRIGGER refunds_queue_updated AFTER UPDATE ON billing.refunds
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION billing.queue_refunded_payments();

-- every payment recorded so far: the first settlement after this migration reads them all once
INSERT INTO billing.settlement_queue (payment_id, queued_seq)
SELECT payment_id, nextval('billing.settlement_queue_seq') FROM billing.payments
WHERE (provider, object_type) IN (('stripe', 'charge'), ('razorpay', 'payment'))
  AND billing.holds_money(status);
