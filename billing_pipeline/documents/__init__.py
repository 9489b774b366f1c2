"""Billing documents: each finalized invoice rendered once to a PDF (billing.invoice_documents), its
sha256 stored beside it. `render.Document` is the kind-independent layout; a credit note builds its own
Document (kind 'credit_note') and stores it the same way with `store`."""
