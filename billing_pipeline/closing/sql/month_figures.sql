-- One month's figures per currency, for the month close. Accounting dates: an invoice counts in the
-- month it bills (period_start: the demo month's invoices are that month's receivables); a payment
-- allocation (captured +, refunded -) on its payment's provider creation time, a wallet payment of an
-- invoice when it was made; a credit note when issued, its refund (provider or wallet) when sent; a
-- wallet entry on its created_at. Outstanding at a time T, per invoice as billing.invoice_balances
-- counts it: total - credited + refunded by credit notes - paid, each dated before T (computed
-- independently of the flows, so the roll-forward proves something).
WITH alloc AS (
    SELECT a.invoice_id, a.amount_minor, a.currency, p.provider_created_at AS at
    FROM billing.invoice_payments a
    JOIN billing.payments p ON p.payment_id = a.payment_id
    UNION ALL
    SELECT invoice_id, amount_minor, currency, paid_at FROM billing.invoice_wallet_payments
),
credit AS (
    SELECT invoice_id, currency, amount_minor, issued_at AS at FROM billing.credit_notes
),
credit_refund AS (
    SELECT invoice_id, currency, amount_minor, created_at AS at FROM billing.refunds WHERE status <> 'failed'
),
inv AS (
    SELECT invoice_id, currency, total_minor, period_start::timestamp AT TIME ZONE 'UTC' AS at
    FROM billing.invoices WHERE status = 'finalized'
),
outstanding AS (
    SELECT t.label, i.currency,
           sum(i.total_minor
               - COALESCE((SELECT sum(c.amount_minor) FROM credit c WHERE c.invoice_id = i.invoice_id AND c.at < t.at), 0)
               + COALESCE((SELECT sum(r.amount_minor) FROM credit_refund r
                           WHERE r.invoice_id = i.invoice_id AND r.at < t.at), 0)
               - COALESCE((SELECT sum(a.amount_minor) FROM alloc a
                           WHERE a.invoice_id = i.invoice_id AND a.at < t.at), 0))::bigint AS amount
    FROM inv i
    CROSS JOIN (VALUES ('outstanding_start', CAST(:start AS timestamptz)),
                       ('outstanding_end', CAST(:end AS timestamptz))) AS t(label, at)
    WHERE i.at < t.at
    GROUP BY 1, 2
),
flows AS (
    SELECT 'invoiced' AS label, currency, sum(total_minor)::bigint AS amount
    FROM inv WHERE at >= :start AND at < :end GROUP BY 2
    UNION ALL
    SELECT CASE WHEN amount_minor > 0 THEN 'collected' ELSE 'refunded' END, currency, sum(abs(amount_minor))::bigint
    FROM alloc WHERE at >= :start AND at < :end GROUP BY 1, 2
    UNION ALL
    SELECT 'credited', c.currency, sum(c.amount_minor)::bigint
    FROM credit c JOIN inv i USING (invoice_id) WHERE c.at >= :start AND c.at < :end GROUP BY 2
    UNION ALL
    SELECT 'refunded', r.currency, sum(r.amount_minor)::bigint
    FROM credit_refund r JOIN inv i USING (invoice_id) WHERE r.at >= :start AND r.at < :end GROUP BY 2
    UNION ALL
    SELECT 'wallet_' || kind, currency, sum(amount_minor)::bigint
    FROM billing.wallet_entries WHERE created_at >= :start AND created_at < :end GROUP BY 1, 2
    UNION ALL
    SELECT 'open_findings_amount', currency,
           sum(CASE WHEN kind = 'amount_mismatch'
                    THEN abs(COALESCE(provider_amount_minor, 0) - COALESCE(internal_amount_minor, 0))
                    ELSE COALESCE(provider_amount_minor, internal_amount_minor, 0) END)::bigint
    FROM recon.findings WHERE status IN ('open', 'acknowledged') AND currency IS NOT NULL AND first_seen < CAST(:end AS date)
    GROUP BY 2
    UNION ALL
    SELECT 'open_findings', currency, count(*)
    FROM recon.findings WHERE status IN ('open', 'acknowledged') AND currency IS NOT NULL AND first_seen < CAST(:end AS date)
    GROUP BY 2
)
SELECT label, currency, amount FROM outstanding
UNION ALL
SELECT label, currency, amount FROM flows
ORDER BY currency, label
