-- Post a batch of wallet entries; the caller holds FOR UPDATE locks on the batch's wallets, so the
-- balances read here are current and no other transaction can move them before commit.
-- Per organisation: credits first, then debits in input order (`ord`). A debit is refused when the
-- running balance would fall below -debt_limit; debits only lower the running balance, so once one is
-- refused every later debit of that organisation in the batch is refused too (no smaller debit is
-- squeezed in out of order). An entry whose (kind, reference) already exists is a duplicate: nothing
-- is posted and the existing entry is returned. An entry in another currency than its wallet's is
-- refused (currency_mismatch). The balances themselves move in billing.wallet_entries_apply().
WITH input AS (
    SELECT *
    FROM unnest(CAST(:ord AS integer[]), CAST(:organisation_id AS text[]), CAST(:kind AS text[]),
                CAST(:reference AS text[]), CAST(:amount_minor AS bigint[]), CAST(:currency AS text[]),
                CAST(:detail AS text[]))
         AS i (ord, organisation_id, kind, reference, amount_minor, currency, detail)
),
judged AS (
    SELECT i.*,
           w.balance_minor AS balance_before,
           w.currency AS wallet_currency,
           o.debt_limit_minor,
           o.recharge_threshold_minor,
           prior.entry_id AS prior_entry_id,
           prior.amount_minor AS prior_amount_minor,
           prior.entry_id IS NULL AND i.currency = w.currency AS postable
    FROM input i
    JOIN billing.wallets w USING (organisation_id)
    JOIN billing.organisations o USING (organisation_id)
    LEFT JOIN billing.wallet_entries prior ON prior.kind = i.kind AND prior.reference = i.reference
),
running AS (
    SELECT j.*,
           j.balance_before + CAST(sum(CASE WHEN j.postable THEN j.amount_minor ELSE 0 END)
               OVER (PARTITION BY j.organisation_id ORDER BY j.amount_minor < 0, j.ord) AS bigint) AS running_minor
    FROM judged j
),
decided AS (
    SELECT r.*,
           CASE WHEN r.prior_entry_id IS NOT NULL THEN 'duplicate'
                WHEN NOT r.postable OR (r.amount_minor < 0 AND r.running_minor < -r.debt_limit_minor)
                    THEN 'refused'
                ELSE 'posted' END AS outcome,
           CASE WHEN r.prior_entry_id IS NOT NULL THEN NULL
                WHEN NOT r.postable THEN 'currency_mismatch'
                WHEN r.amount_minor < 0 AND r.running_minor < -r.debt_limit_minor THEN 'debt_limit' END AS reason
    FROM running r
),
balances AS (
    SELECT d.*,
           d.balance_before + CAST(sum(CASE WHEN d.outcome = 'posted' THEN d.amount_minor ELSE 0 END)
               OVER (PARTITION BY d.organisation_id) AS bigint) AS final_minor
    FROM decided d
),
posted AS (
    INSERT INTO billing.wallet_entries (organisation_id, kind, reference, amount_minor, currency, actor, detail)
    SELECT organisation_id, kind, reference, amount_minor, currency, :actor, CAST(detail AS jsonb)
    FROM balances WHERE outcome = 'posted'
    ORDER BY organisation_id, amount_minor < 0, ord
    RETURNING entry_id, kind, reference
),
refused AS (
    INSERT INTO billing.wallet_refusals (organisation_id, kind, reference, amount_minor, currency, balance_minor,
                                         wallet_currency, debt_limit_minor, reason, detail, actor)
    SELECT organisation_id, kind, reference, amount_minor, currency, final_minor, wallet_currency,
           debt_limit_minor, reason,
           CASE reason
               WHEN 'debt_limit' THEN format(
                   '%s of %s %s would take the balance from %s to %s, below the debt limit of -%s',
                   kind, -amount_minor, currency, final_minor, final_minor + amount_minor, debt_limit_minor)
               ELSE format('%s is in %s but the wallet is in %s', kind, currency, wallet_currency)
           END,
           :actor
    FROM balances WHERE outcome = 'refused'
    RETURNING refusal_id, kind, reference
)
SELECT b.ord, b.outcome, b.reason,
       COALESCE(p.entry_id, b.prior_entry_id) AS entry_id,
       b.prior_amount_minor,
       r.refusal_id,
       b.wallet_currency,
       b.recharge_threshold_minor,
       CASE WHEN b.outcome = 'posted' THEN b.running_minor ELSE b.final_minor END AS balance_minor,
       b.balance_before AS wallet_before_minor,
       b.final_minor AS wallet_after_minor
FROM balances b
LEFT JOIN posted p ON p.kind = b.kind AND p.reference = b.reference
LEFT JOIN refused r ON r.kind = b.kind AND r.reference = b.reference
ORDER BY b.ord
