-- Keys that carry organisation_id (docs/scaling.md, "Keys Citus would reject today"): the primary and
-- unique keys of distributed tables that already have a NOT NULL organisation_id and that no foreign
-- key of another table needs as it is, and the foreign keys between such tables, now include
-- organisation_id, so Citus would accept them with the tables distributed by organisation_id; and one
-- child table without organisation_id (invoice_wallet_payments) gains it, copied from its invoice.
--
-- What changes (one column is added, invoice_wallet_payments.organisation_id; no other row is rewritten):
--   * billing.invoices and billing.credit_notes gain UNIQUE (invoice_id, organisation_id) and
--     UNIQUE (credit_note_id, organisation_id): the targets of the composite foreign keys below. Their
--     primary keys stay (invoice lines, voids, documents, credit-note lines still reference them alone).
--   * wallet_refusals, notification_outbox, collection_attempts, dunning_attempts, grace_periods and
--     refunds: each primary key (x) becomes (x, organisation_id) and each unique key (x...) becomes
--     (x..., organisation_id);
--   * the foreign keys collection_attempts, dunning_attempts, grace_periods, refunds and credit_notes ->
--     invoices, dunning_attempts -> grace_periods and refunds -> credit_notes become composite:
--     (invoice_id, organisation_id) REFERENCES invoices (invoice_id, organisation_id), and alike;
--   * billing.invoice_wallet_payments gains organisation_id, copied from the invoice (backfilled here
--     from billing.invoices, then NOT NULL; payments/collection.py writes it from the invoice it pays):
--     its primary key becomes (invoice_id, organisation_id), its foreign key to invoices composite.
-- organisation_id is the last column of each key, not the first: a key's column order does not matter
-- to Citus (the key must contain the distribution column) nor to ON CONFLICT (its target names a set of
-- columns), and with the old key's columns first the index keeps serving the lookups by id, invoice or
-- idempotency key alone that the code makes today (no extra index is needed).
--
-- Why no guarantee is weakened:
--   * Keys derived from an invoice (collection_attempts.invoice_id and `collect:<invoice id>`,
--     dunning_attempts (invoice_id, attempt) and `dunning:<invoice id>:<attempt>`, grace_periods.invoice_id)
--     or a credit note (refunds.credit_note_id and `credit_note:<credit note id>`): the composite foreign
--     keys make the row's organisation_id the organisation of its invoice (credit note) in the database,
--     not only in the code that copies it. The organisation is then a function of the invoice, so
--     "unique per (invoice, organisation)" is exactly "unique per invoice" as before: one collection
--     and one grace period per invoice, one dunning attempt per slot, one refund per credit note. The
--     idempotency keys sent to Stripe/Razorpay are built from the globally unique invoice or credit note
--     id, so they stay globally unique as the providers need, and are still enforced per organisation.
--   * invoice_wallet_payments: one wallet payment per invoice, as before, for the same reason (the
--     composite foreign key makes organisation_id a function of invoice_id); billing.invoice_balances,
--     which joins it by invoice_id alone, still finds at most one row per invoice.
--   * notification_outbox.dedupe_key: every key the code builds names an entity of one organisation
--     (`grace_started:<grace id>`, `payment_link:<collection id>`, `payment_retry_failed:<attempt id>`,
--     `trial_ending:<organisation id>:<time>`, ...) and is queued with that organisation, so
--     (dedupe_key, organisation_id) dedupes the same facts as dedupe_key alone; the HTTP sender's
--     Idempotency-Key and the mail's Message-ID stay unique because the keys name globally unique ids.
--     queue_notifications.sql's ON CONFLICT names the new key.
--   * Surrogate ids (refusal_id, notification_id, collection_id, attempt_id, grace_id, refund_id) are
--     GENERATED ALWAYS identities: no INSERT supplies one (none uses OVERRIDING SYSTEM VALUE), so they
--     stay globally unique by construction, and the code that updates a row by its id alone still
--     addresses one row. Only the enforcement narrows to the organisation, as docs/scaling.md says.
--   * open_grace_periods.sql's ON CONFLICT names (invoice_id, organisation_id); claim_collections.sql
--     and claim_dunning_attempts.sql use ON CONFLICT DO NOTHING without a target, which covers every
--     unique key of their table, old or new.
-- Left as they are, with the reason in docs/scaling.md: invoice and credit-note numbers (globally
-- unique), payments and calls (organisation_id may be NULL, and attribution sets it later), the wallet
-- ledger's (kind, reference) (a call is charged once whatever organisation it is attributed to), and
-- the tables without organisation_id.
--
-- On a database with data: the new keys contain the old ones, so existing rows satisfy them; the
-- composite foreign keys hold because every writer copies organisation_id from the invoice, grace
-- period or credit note it names (a row that does not stops this migration, which then changes nothing).
-- invoice_wallet_payments is append-only (a trigger refuses UPDATE): the trigger is disabled for the
-- backfill only, inside this migration's transaction.

-- the targets of the composite foreign keys
ALTER TABLE billing.invoices
    ADD CONSTRAINT invoices_invoice_id_organisation_id_key UNIQUE (invoice_id, organisation_id);
ALTER TABLE billing.credit_notes
    ADD CONSTRAINT credit_notes_credit_note_id_organisation_id_key UNIQUE (credit_note_id, organisation_id);

-- the foreign keys that depend on keys replaced below go first
ALTER TABLE billing.dunning_attempts DROP CONSTRAINT dunning_attempts_grace_id_fkey;

ALTER TABLE billing.wallet_refusals
    DROP CONSTRAINT wallet_refusals_pkey,
    ADD CONSTRAINT wallet_refusals_pkey PRIMARY KEY (refusal_id, organisation_id);

ALTER TABLE billing.notification_outbox
    DROP CONSTRAINT notification_outbox_pkey,
    DROP CONSTRAINT notification_outbox_dedupe_key_key,
    ADD CONSTRAINT notification_outbox_pkey PRIMARY KEY (notification_id, organisation_id),
    ADD CONSTRAINT notification_outbox_dedupe_key_organisation_id_key UNIQUE (dedupe_key, organisation_id);

ALTER TABLE billing.collection_attempts
    DROP CONSTRAINT collection_attempts_pkey,
    DROP CONSTRAINT collection_attempts_invoice_id_key,
    DROP CONSTRAINT collection_attempts_idempotency_key_key,
    DROP CONSTRAINT collection_attempts_invoice_id_fkey,
    ADD CONSTRAINT collection_attempts_pkey PRIMARY KEY (collection_id, organisation_id),
    ADD CONSTRAINT collection_attempts_invoice_id_organisation_id_key UNIQUE (invoice_id, organisation_id),
    ADD CONSTRAINT collection_attempts_idempotency_key_organisation_id_key UNIQUE (idempotency_key, organisation_id),
    ADD CONSTRAINT collection_attempts_invoice_id_organisation_id_fkey FOREIGN KEY (invoice_id, organisation_id)
        REFERENCES billing.invoices (invoice_id, organisation_id);

ALTER TABLE billing.grace_periods
    DROP CONSTRAINT grace_periods_pkey,
    DROP CONSTRAINT grace_periods_invoice_id_key,
    DROP CONSTRAINT grace_periods_invoice_id_fkey,
    ADD CONSTRAINT grace_periods_pkey PRIMARY KEY (grace_id, organisation_id),
    ADD CONSTRAINT grace_periods_invoice_id_organisation_id_key UNIQUE (invoice_id, organisation_id),
    ADD CONSTRAINT grace_periods_invoice_id_organisation_id_fkey FOREIGN KEY (invoice_id, organisation_id)
        REFERENCES billing.invoices (invoice_id, organisation_id);

ALTER TABLE billing.dunning_attempts
    DROP CONSTRAINT dunning_attempts_pkey,
    DROP CONSTRAINT dunning_attempts_idempotency_key_key,
    DROP CONSTRAINT dunning_attempts_invoice_id_attempt_key,
    DROP CONSTRAINT dunning_attempts_invoice_id_fkey,
    ADD CONSTRAINT dunning_attempts_pkey PRIMARY KEY (attempt_id, organisation_id),
    ADD CONSTRAINT dunning_attempts_idempotency_key_organisation_id_key UNIQUE (idempotency_key, organisation_id),
    ADD CONSTRAINT dunning_attempts_invoice_id_attempt_organisation_id_key UNIQUE (invoice_id, attempt, organisation_id),
    ADD CONSTRAINT dunning_attempts_invoice_id_organisation_id_fkey FOREIGN KEY (invoice_id, organisation_id)
        REFERENCES billing.invoices (invoice_id, organisation_id),
    ADD CONSTRAINT dunning_attempts_grace_id_organisation_id_fkey FOREIGN KEY (grace_id, organisation_id)
        REFERENCES billing.grace_periods (grace_id, organisation_id);

ALTER TABLE billing.refunds
    DROP CONSTRAINT refunds_pkey,
    DROP CONSTRAINT refunds_credit_note_id_key,
    DROP CONSTRAINT refunds_idempotency_key_key,
    DROP CONSTRAINT refunds_credit_note_id_fkey,
    DROP CONSTRAINT refunds_invoice_id_fkey,
    ADD CONSTRAINT refunds_pkey PRIMARY KEY (refund_id, organisation_id),
    ADD CONSTRAINT refunds_credit_note_id_organisation_id_key UNIQUE (credit_note_id, organisation_id),
    ADD CONSTRAINT refunds_idempotency_key_organisation_id_key UNIQUE (idempotency_key, organisation_id),
    ADD CONSTRAINT refunds_credit_note_id_organisation_id_fkey FOREIGN KEY (credit_note_id, organisation_id)
        REFERENCES billing.credit_notes (credit_note_id, organisation_id),
    ADD CONSTRAINT refunds_invoice_id_organisation_id_fkey FOREIGN KEY (invoice_id, organisation_id)
        REFERENCES billing.invoices (invoice_id, organisation_id);

ALTER TABLE billing.credit_notes
    DROP CONSTRAINT credit_notes_invoice_id_fkey,
    ADD CONSTRAINT credit_notes_invoice_id_organisation_id_fkey FOREIGN KEY (invoice_id, organisation_id)
        REFERENCES billing.invoices (invoice_id, organisation_id);

ALTER TABLE billing.invoice_wallet_payments ADD COLUMN organisation_id text;
ALTER TABLE billing.invoice_wallet_payments DISABLE TRIGGER invoice_wallet_payments_append_only;
UPDATE billing.invoice_wallet_payments w SET organisation_id = i.organisation_id
FROM billing.invoices i WHERE i.invoice_id = w.invoice_id;
ALTER TABLE billing.invoice_wallet_payments ENABLE TRIGGER invoice_wallet_payments_append_only;
ALTER TABLE billing.invoice_wallet_payments
    ALTER COLUMN organisation_id SET NOT NULL,
    DROP CONSTRAINT invoice_wallet_payments_pkey,
    DROP CONSTRAINT invoice_wallet_payments_invoice_id_fkey,
    ADD CONSTRAINT invoice_wallet_payments_pkey PRIMARY KEY (invoice_id, organisation_id),
    ADD CONSTRAINT invoice_wallet_payments_invoice_id_organisation_id_fkey FOREIGN KEY (invoice_id, organisation_id)
        REFERENCES billing.invoices (invoice_id, organisation_id);
