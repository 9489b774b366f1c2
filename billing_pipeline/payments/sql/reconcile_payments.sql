-- Payment reconciliation of the days [:start, :end): provider records against billing.payments against
-- invoices, written to recon.discrepancies (source :source) and recon.payment_reconciliation_totals in
-- one statement. The caller has deleted the range's previous rows. Money objects only: Stripe charges
-- and refunds, Razorpay payments and refunds (payment intents and orders only wrap them; object types
-- do not overlap between the providers). A finding's day is the day the provider created the object.
--
-- provider leg (the window's provider records and ledger rows, joined by id):
--   missing_internal     the provider has it; no webhook ever told us (recovered by the sync, or absent)
--   missing_at_provider  a ledger row that the provider's listings of the window do not have
--   amount_mismatch      amount or currency differ (the ledger keeps the amount first recorded)
--   status_mismatch      canonical state or refunded amount differ (the provider is behind our ledger:
--                        the ledger only moves forward)
-- invoice leg (payments allocated by settlement):
--   duplicate            a payment made when its invoice was already fully paid (the invoice charged twice)
--   amount_mismatch      by the end of the day of a payment its invoice is partially paid or overpaid
--                        (duplicates aside; reference: the invoice number)
--   unapplied_payment    a captured payment that no finalized invoice takes (money we hold unexplained)
WITH prov AS (
    SELECT provider, object_type, object_id, created_at, amount_minor, amount_refunded_minor, currency, status,
           provider_status
    FROM billing.provider_records
    WHERE created_at >= :start AND created_at < :end AND object_type IN ('charge', 'payment', 'refund')
),
led AS (
    SELECT payment_id, provider, object_type, object_id, organisation_id, provider_created_at, amount_minor,
           amount_refunded_minor, currency, status, provider_status, first_seen_via, last_event_id, webhook_seen_at
    FROM billing.payments
    WHERE provider_created_at >= :start AND provider_created_at < :end
      AND object_type IN ('charge', 'payment', 'refund')
),
-- both sides of the window by id: an object's day is the provider's creation time, the same on both sides
pairs AS (
    SELECT COALESCE(r.provider, l.provider) AS provider, COALESCE(r.object_type, l.object_type) AS object_type,
           COALESCE(r.object_id, l.object_id) AS object_id, COALESCE(r.created_at, l.provider_created_at) AS at,
           r.object_id IS NOT NULL AS at_provider, l.payment_id, l.organisation_id, l.webhook_seen_at,
           r.amount_minor AS provider_amount, r.currency AS provider_currency, r.status AS provider_state,
           r.provider_status, r.amount_refunded_minor AS provider_refunded,
           l.amount_minor AS internal_amount, l.currency AS internal_currency, l.status AS internal_state,
           l.provider_status AS internal_provider_status, l.amount_refunded_minor AS internal_refunded,
           l.first_seen_via, l.last_event_id,
           (l.amount_minor <> r.amount_minor OR l.currency <> r.currency) AS amount_differs,
           (l.status <> r.status OR l.amount_refunded_minor <> r.amount_refunded_minor) AS state_differs
    FROM prov r FULL JOIN led l ON l.provider = r.provider AND l.object_id = r.object_id
),
-- the invoices that payments of the window went to, with every payment each of them received
touched AS (
    SELECT DISTINCT a.invoice_id FROM billing.invoice_payments a JOIN billing.payments p USING (payment_id)
    WHERE p.provider_created_at >= :start AND p.provider_created_at < :end
),
inv_pay AS (
    SELECT a.invoice_id, a.payment_id, a.allocated, p.provider, p.object_id, p.provider_created_at,
           i.number, i.currency, i.organisation_id,
           -- what the invoice asks for once credit notes are counted (their refunds stay paid)
           i.total_minor - COALESCE(ic.credited_minor, 0) + COALESCE(ic.refunded_minor, 0)
               - COALESCE(iw.amount_minor, 0) AS total_minor,  -- and what the prepaid wallet paid
           COALESCE(sum(a.allocated) OVER (PARTITION BY a.invoice_id ORDER BY p.provider_created_at, p.payment_id
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS paid_before
    FROM (SELECT invoice_id, payment_id, sum(amount_minor)::bigint AS allocated
          FROM billing.invoice_payments WHERE invoice_id IN (SELECT invoice_id FROM touched)
          GROUP BY invoice_id, payment_id) a
    JOIN billing.payments p ON p.payment_id = a.payment_id
    JOIN billing.invoices i ON i.invoice_id = a.invoice_id
    LEFT JOIN billing.invoice_credits ic ON ic.invoice_id = a.invoice_id
    LEFT JOIN billing.invoice_wallet_payments iw ON iw.invoice_id = a.invoice_id
),
inv_running AS (
    SELECT x.*,
           sum(CASE WHEN x.duplicate THEN 0 ELSE x.allocated END)
               OVER (PARTITION BY x.invoice_id ORDER BY x.provider_created_at, x.payment_id) AS paid_through,
           row_number() OVER (PARTITION BY x.invoice_id, (x.provider_created_at AT TIME ZONE 'UTC')::date
                              ORDER BY x.provider_created_at DESC, x.payment_id DESC) AS nth_from_day_end
    FROM (SELECT y.*, (y.allocated > 0 AND y.total_minor > 0 AND y.paid_before >= y.total_minor) AS duplicate
          FROM inv_pay y) x
),
findings AS (
    SELECT 'missing_internal' AS kind, provider, organisation_id, object_id AS reference, at,
           NULL::bigint AS internal_amount, provider_amount, provider_currency AS currency,
           CASE WHEN payment_id IS NULL
                THEN format('%s %s (%s) is not in billing.payments', provider, object_type, provider_status)
                ELSE format('no webhook received for %s %s (%s); recovered from the provider sync',
                            provider, object_type, provider_status) END AS detail
    FROM pairs WHERE at_provider AND (payment_id IS NULL OR webhook_seen_at IS NULL)
      -- a refund that a credit note made and recorded itself is known, not a finding
      AND NOT (payment_id IS NOT NULL AND object_id IN (SELECT provider_object_id FROM billing.refunds
                                                         WHERE provider_object_id IS NOT NULL))
    UNION ALL
    SELECT 'amount_mismatch', provider, organisation_id, object_id, at, internal_amount, provider_amount,
           provider_currency,
           format('%s %s: recorded %s %s, the provider has %s %s (minor units)', provider, object_type,
                  internal_amount, internal_currency, provider_amount, provider_currency)
    FROM pairs WHERE amount_differs
    UNION ALL
    SELECT 'status_mismatch', provider, organisation_id, object_id, at, internal_amount, provider_amount,
           provider_currency,
           format('%s %s: recorded %s (refunded %s), the provider says %s (%s, refunded %s; minor units)',
                  provider, object_type, internal_state, internal_refunded, provider_state, provider_status,
                  provider_refunded)
    FROM pairs WHERE state_differs
    UNION ALL
    SELECT 'missing_at_provider', provider, organisation_id, object_id, at, internal_amount, NULL,
           internal_currency,
           format('%s %s (%s) recorded from %s %s; no provider listing has it', provider, object_type,
                  internal_provider_status, first_seen_via, COALESCE(last_event_id, ''))
    FROM pairs WHERE NOT at_provider
    UNION ALL
    SELECT 'duplicate', provider, organisation_id, object_id, provider_created_at, total_minor, allocated, currency,
           format('invoice %s (total %s %s) was already paid (%s) when %s %s paid %s more (minor units)',
                  number, total_minor, currency, paid_before, provider, object_id, allocated)
    FROM inv_running
    WHERE duplicate AND provider_created_at >= :start AND provider_created_at < :end
    UNION ALL
    SELECT 'amount_mismatch', provider, organisation_id, number, provider_created_at, total_minor, paid_through,
           currency,
           format('invoice %s: %s of %s %s paid by the end of %s (%s; minor units)', number, paid_through,
                  total_minor, currency, (provider_created_at AT TIME ZONE 'UTC')::date,
                  CASE WHEN paid_through > total_minor THEN 'overpaid' ELSE 'partially paid' END)
    FROM inv_running
    WHERE nth_from_day_end = 1 AND paid_through <> total_minor AND paid_through > 0
      AND provider_created_at >= :start AND provider_created_at < :end
    UNION ALL
    SELECT 'unapplied_payment', l.provider, l.organisation_id, l.object_id, l.provider_created_at, NULL,
           l.amount_minor - l.amount_refunded_minor, l.currency,
           CASE WHEN l.invoice_ref IS NOT NULL
                THEN format('%s %s names invoice %s, which is not a finalized invoice in %s', l.provider,
                            l.object_id, l.invoice_ref, l.currency)
                ELSE format('%s %s matches no finalized invoice (no reference; no open invoice of %s for '
                            '%s %s minor units)', l.provider, l.object_id,
                            COALESCE(l.organisation_id, 'an unknown customer'),
                            l.amount_minor - l.amount_refunded_minor, l.currency) END
    FROM billing.payments l
    WHERE l.provider_created_at >= :start AND l.provider_created_at < :end
      AND l.object_type IN ('charge', 'payment') AND l.status IN ('captured', 'partially_refunded')
      AND l.amount_minor > l.amount_refunded_minor
      AND NOT EXISTS (SELECT 1 FROM billing.invoice_payments a WHERE a.payment_id = l.payment_id)
),
inserted AS (
    INSERT INTO recon.discrepancies (recon_date, source, kind, provider, organisation_id, reference,
                                     internal_amount_minor, provider_amount_minor, currency, detail)
    SELECT (at AT TIME ZONE 'UTC')::date, CAST(:source AS text), kind, provider, organisation_id, reference,
           internal_amount, provider_amount, currency, detail
    FROM findings
    RETURNING 1
),
totals AS (
    INSERT INTO recon.payment_reconciliation_totals (recon_date, provider, currency, outcome, records,
                                                     provider_amount_minor, internal_amount_minor)
    SELECT (at AT TIME ZONE 'UTC')::date, provider, provider_currency, 'matched', count(*),
           sum(provider_amount), sum(internal_amount)
    FROM pairs
    WHERE at_provider AND webhook_seen_at IS NOT NULL AND NOT amount_differs AND NOT state_differs
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT (at AT TIME ZONE 'UTC')::date, provider, currency, kind, count(*), COALESCE(sum(provider_amount), 0),
           COALESCE(sum(internal_amount), 0)
    FROM findings
    GROUP BY 1, 2, 3, 4
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS findings, (SELECT count(*) FROM totals) AS totals
