-- A pending attempt whose invoice is already paid (another payment settled it since the attempt was
-- claimed) is never sent: if its first send never reached the provider, sending it now would charge
-- the customer a second time. If it did reach the provider, the sync brings that charge in and
-- payment reconciliation shows the overpayment.
UPDATE billing.dunning_attempts a
SET status = 'canceled',
    completed_at = CAST(:now AS timestamptz),
    error_message = 'invoice paid before this attempt was sent'
FROM billing.invoice_balances b
WHERE a.status = 'pending' AND b.invoice_id = a.invoice_id AND b.balance_minor <= 0
RETURNING a.attempt_id, a.invoice_id, a.organisation_id, a.attempt, a.status, a.amount_minor, a.currency,
          a.idempotency_key, b.number
