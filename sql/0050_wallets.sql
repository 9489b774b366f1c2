-- Prepaid wallets: per organisation an append-only ledger (billing.wallet_entries) and one balance row
-- (billing.wallets) that only the ledger moves, so balance = sum of entries is kept by the database:
--   * inserting entries moves the balance in the same statement (statement trigger below), and that
--     trigger refuses a statement that takes a wallet it debited below minus the organisation's
--     debt limit (billing.organisations.debt_limit_minor), whoever wrote the INSERT;
--   * a balance cannot be changed any other way, entries cannot be changed or deleted.
-- Currency: a wallet is in its organisation's currency, fixed when the wallet is opened; every entry
-- must be in that currency. Vapi bills in USD, so calls are charged to USD wallets only (a call of a
-- non-USD organisation is refused with reason currency_mismatch, visible in billing.wallet_refusals).

CREATE TABLE billing.wallets (
    organisation_id text PRIMARY KEY REFERENCES billing.organisations (organisation_id),
    currency        char(3) NOT NULL,
    balance_minor   bigint NOT NULL DEFAULT 0,
    opened_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.wallet_entries (
    entry_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id text NOT NULL REFERENCES billing.wallets (organisation_id),
    kind            text NOT NULL CHECK (kind IN ('top_up', 'call_charge', 'adjustment')),
    reference       text NOT NULL,   -- call id, top-up payment id, adjustment key: the idempotency key
    amount_minor    bigint NOT NULL CHECK (amount_minor <> 0),   -- credit > 0, debit < 0
    currency        char(3) NOT NULL,
    actor           text NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, reference),
    CHECK (kind <> 'top_up' OR amount_minor > 0),
    CHECK (kind <> 'call_charge' OR amount_minor < 0)
);
CREATE INDEX wallet_entries_org ON billing.wallet_entries (organisation_id, entry_id);

-- Debits that were refused (the balance did not change): what finance reads to chase unpaid usage.
CREATE TABLE billing.wallet_refusals (
    refusal_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id  text NOT NULL REFERENCES billing.organisations (organisation_id),
    kind             text NOT NULL,
    reference        text NOT NULL,
    amount_minor     bigint NOT NULL,    -- the refused entry's amount (negative for a debit)
    currency         char(3) NOT NULL,   -- the refused entry's currency
    balance_minor    bigint NOT NULL,    -- the wallet's balance, unchanged by the refusal
    wallet_currency  char(3) NOT NULL,
    debt_limit_minor bigint NOT NULL,
    reason           text NOT NULL CHECK (reason IN ('debt_limit', 'currency_mismatch')),
    detail           text NOT NULL,
    actor            text NOT NULL,
    refused_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_refusals_org ON billing.wallet_refusals (organisation_id, refused_at);
CREATE INDEX wallet_refusals_reference ON billing.wallet_refusals (kind, reference);

CREATE TRIGGER wallet_entries_append_only BEFORE UPDATE OR DELETE ON billing.wallet_entries
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER wallet_entries_no_truncate BEFORE TRUNCATE ON billing.wallet_entries
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER wallet_refusals_append_only BEFORE UPDATE OR DELETE ON billing.wallet_refusals
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();

-- New entries move their wallets' balances, then no debited wallet may be below -debt_limit.
CREATE FUNCTION billing.wallet_entries_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT e.organisation_id, e.currency, w.currency AS wallet_currency INTO bad
    FROM new_entries e JOIN billing.wallets w USING (organisation_id)
    WHERE e.currency <> w.currency LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'wallet of % is in %, an entry in % cannot be posted to it',
            bad.organisation_id, bad.wallet_currency, bad.currency USING ERRCODE = 'check_violation';
    END IF;

    WITH net AS (
        SELECT organisation_id, sum(amount_minor) AS amount FROM new_entries GROUP BY organisation_id
    )
    UPDATE billing.wallets w SET balance_minor = w.balance_minor + net.amount, updated_at = now()
    FROM net WHERE w.organisation_id = net.organisation_id;

    SELECT w.organisation_id, w.balance_minor, o.debt_limit_minor INTO bad
    FROM (SELECT organisation_id FROM new_entries GROUP BY organisation_id HAVING sum(amount_minor) < 0) d
    JOIN billing.wallets w USING (organisation_id)
    JOIN billing.organisations o USING (organisation_id)
    WHERE w.balance_minor < -o.debt_limit_minor LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'wallet of % would go to % minor units, below its debt limit of -%',
            bad.organisation_id, bad.balance_minor, bad.debt_limit_minor USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER wallet_entries_apply AFTER INSERT ON billing.wallet_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION billing.wallet_entries_apply();

-- A balance moves only through wallet_entries_apply (trigger depth 2); a wallet opens at zero, keeps
-- its currency and is never deleted.
CREATE FUNCTION billing.wallets_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND NEW.balance_minor <> 0 THEN
        RAISE EXCEPTION 'a wallet opens with balance 0; credit it with a wallet entry'
            USING ERRCODE = 'restrict_violation';
    ELSIF TG_OP = 'UPDATE' AND NEW.currency IS DISTINCT FROM OLD.currency THEN
        RAISE EXCEPTION 'the currency of a wallet cannot change' USING ERRCODE = 'restrict_violation';
    ELSIF TG_OP = 'UPDATE' AND NEW.balance_minor IS DISTINCT FROM OLD.balance_minor
          AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'wallet balances change only by inserting into billing.wallet_entries'
            USING ERRCODE = 'restrict_violation';
    ELSIF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'wallets are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER wallets_guard BEFORE INSERT OR UPDATE OR DELETE ON billing.wallets
    FOR EACH ROW EXECUTE FUNCTION billing.wallets_guard();
CREATE TRIGGER wallets_no_truncate BEFORE TRUNCATE ON billing.wallets
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();

-- One row per organisation, for finance: its wallet (an organisation without one yet shows balance 0
-- in its own currency), what it may still spend, and whether it needs a recharge (balance under the
-- organisation's recharge threshold, read live from the catalog).
CREATE VIEW billing.wallet_status AS
SELECT o.organisation_id,
       COALESCE(w.currency, o.currency) AS currency,
       COALESCE(w.balance_minor, 0) AS balance_minor,
       o.debt_limit_minor,
       COALESCE(w.balance_minor, 0) + o.debt_limit_minor AS available_minor,
       o.recharge_threshold_minor,
       COALESCE(w.balance_minor, 0) < o.recharge_threshold_minor AS needs_recharge,
       w.updated_at
FROM billing.organisations o
LEFT JOIN billing.wallets w USING (organisation_id);
