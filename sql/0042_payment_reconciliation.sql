-- What payment_reconciliation adds next to recon.discrepancies: per day, provider and currency, how
-- many records matched and how many fell under each discrepancy kind, with their amounts
-- (replaced per partition, like the discrepancies).

CREATE TABLE recon.payment_reconciliation_totals (
    recon_date            date NOT NULL,
    provider              text NOT NULL,
    currency              char(3) NOT NULL,
    outcome               text NOT NULL,   -- 'matched' or a discrepancy kind
    records               integer NOT NULL,
    provider_amount_minor bigint NOT NULL,
    internal_amount_minor bigint NOT NULL,
    computed_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (recon_date, provider, currency, outcome)
);
