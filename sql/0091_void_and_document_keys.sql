-- Voids, replacements and invoice documents carry organisation_id (docs/scaling.md), like the tables of
-- 0090: each gains the column, copied from its invoice (backfilled here, then NOT NULL; written by
-- invoicing/voids.py and documents/invoices.py from the invoice they name), its keys gain it as their
-- last column and its foreign keys to invoices (and a replacement's to its void) become composite, so
-- the database keeps it equal to the invoice's. One void and one replacement per invoice and one
-- document per kind and number stay exactly as unique as before: the organisation is a function of the
-- invoice, and a number is globally unique (invoices_number_key, credit_notes_number_key).
-- The three tables are append-only (a trigger refuses UPDATE): the triggers are off for the backfill
-- only, inside this migration's transaction.
ALTER TABLE billing.invoice_voids ADD COLUMN organisation_id text;
ALTER TABLE billing.invoice_replacements ADD COLUMN organisation_id text;
ALTER TABLE billing.invoice_documents ADD COLUMN organisation_id text;

ALTER TABLE billing.invoice_voids DISABLE TRIGGER invoice_voids_append_only;
ALTER TABLE billing.invoice_replacements DISABLE TRIGGER invoice_replacements_append_only;
ALTER TABLE billing.invoice_documents DISABLE TRIGGER invoice_documents_append_only;
UPDATE billing.invoice_voids v SET organisation_id = i.organisation_id
FROM billing.invoices i WHERE i.invoice_id = v.invoice_id;
UPDATE billing.invoice_replacements r SET organisation_id = i.organisation_id
FROM billing.invoices i WHERE i.invoice_id = r.voided_invoice_id;
UPDATE billing.invoice_documents d SET organisation_id = i.organisation_id
FROM billing.invoices i WHERE i.invoice_id = d.invoice_id;
ALTER TABLE billing.invoice_voids ENABLE TRIGGER invoice_voids_append_only;
ALTER TABLE billing.invoice_replacements ENABLE TRIGGER invoice_replacements_append_only;
ALTER TABLE billing.invoice_documents ENABLE TRIGGER invoice_documents_append_only;

ALTER TABLE billing.invoice_replacements
    DROP CONSTRAINT invoice_replacements_pkey,
    DROP CONSTRAINT invoice_replacements_voided_invoice_id_fkey,
    DROP CONSTRAINT invoice_replacements_replacement_invoice_id_key,
    DROP CONSTRAINT invoice_replacements_replacement_invoice_id_fkey;
ALTER TABLE billing.invoice_voids
    ALTER COLUMN organisation_id SET NOT NULL,
    DROP CONSTRAINT invoice_voids_pkey,
    DROP CONSTRAINT invoice_voids_invoice_id_fkey,
    ADD CONSTRAINT invoice_voids_pkey PRIMARY KEY (invoice_id, organisation_id),
    ADD CONSTRAINT invoice_voids_invoice_id_organisation_id_fkey FOREIGN KEY (invoice_id, organisation_id)
        REFERENCES billing.invoices (invoice_id, organisation_id);
ALTER TABLE billing.invoice_replacements
    ALTER COLUMN organisation_id SET NOT NULL,
    ADD CONSTRAINT invoice_replacements_pkey PRIMARY KEY (voided_invoice_id, organisation_id),
    ADD CONSTRAINT invoice_replacements_replacement_invoice_id_organisation_id_key
        UNIQUE (replacement_invoice_id, organisation_id),
    ADD CONSTRAINT invoice_replacements_voided_invoice_id_organisation_id_fkey
        FOREIGN KEY (voided_invoice_id, organisation_id) REFERENCES billing.invoice_voids (invoice_id, organisation_id),
    ADD CONSTRAINT invoice_replacements_replacement_invoice_id_organisation_id_fkey
        FOREIGN KEY (replacement_invoice_id, organisation_id) REFERENCES billing.invoices (invoice_id, organisation_id);
ALTER TABLE billing.invoice_documents
    ALTER COLUMN organisation_id SET NOT NULL,
    DROP CONSTRAINT invoice_documents_pkey,
    DROP CONSTRAINT invoice_documents_invoice_id_fkey,
    ADD CONSTRAINT invoice_documents_pkey PRIMARY KEY (document_kind, number, organisation_id),
    ADD CONSTRAINT invoice_documents_invoice_id_organisation_id_fkey FOREIGN KEY (invoice_id, organisation_id)
        REFERENCES billing.invoices (invoice_id, organisation_id);
