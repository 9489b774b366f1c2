-- The documents customers and auditors read: each finalized invoice (and, later, each credit note)
-- rendered once to a PDF, kept with its sha256 so a copy can be proven unchanged. Invoices are
-- immutable (0031), so the documents live beside them; rows are append-only like the invoices.

CREATE TABLE billing.invoice_documents (
    document_kind   text NOT NULL CHECK (document_kind IN ('invoice', 'credit_note')),
    number          text NOT NULL,                   -- the invoice's (or credit note's) number
    invoice_id      bigint NOT NULL REFERENCES billing.invoices (invoice_id),
    currency        char(3) NOT NULL,
    total_minor     bigint NOT NULL,                 -- as printed
    sha256          char(64) NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    pdf             bytea NOT NULL,
    renderer        text NOT NULL,                   -- library and version that produced it
    rendered_at     timestamptz NOT NULL DEFAULT now(),
    rendered_by     text NOT NULL,
    PRIMARY KEY (document_kind, number),
    CHECK (encode(sha256(pdf), 'hex') = sha256)
);
CREATE INDEX invoice_documents_invoice ON billing.invoice_documents (invoice_id);

CREATE TRIGGER invoice_documents_append_only BEFORE UPDATE OR DELETE ON billing.invoice_documents
    FOR EACH ROW EXECUTE FUNCTION billing.reject_change();
CREATE TRIGGER invoice_documents_no_truncate BEFORE TRUNCATE ON billing.invoice_documents
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();
