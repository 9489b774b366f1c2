-- Who issues the invoices and who receives them, from the catalog, for the invoice and credit-note
-- documents (billing_pipeline/documents): the catalog's `seller` section (one issuing company) and each
-- organisation's `billing_details` (legal name, address lines, tax id, e-mail). A document is rendered
-- once, when its invoice or credit note is issued, with the details of that moment.
CREATE TABLE billing.seller (
    seller_id    boolean PRIMARY KEY DEFAULT true CHECK (seller_id),   -- one row
    name         text NOT NULL CHECK (name <> ''),
    details      jsonb NOT NULL DEFAULT '{}',     -- {address: [lines], tax_id, email}
    updated_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE billing.organisations ADD COLUMN billing_details jsonb NOT NULL DEFAULT '{}';
