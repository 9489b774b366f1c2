"""Invoicing: monthly drafts, the blocking checks on them, and finalization.

The month-end job and its schedule are operations' monthly_invoicing_job / monthly_invoicing_schedule.
"""

import dagster as dg

from billing_pipeline.defs.invoicing.assets import finalized_invoices, invoice_documents, invoice_drafts
from billing_pipeline.defs.invoicing.checks import invoice_drafts_rules, invoice_drafts_sql_checks

defs = dg.Definitions(
    assets=[invoice_drafts, finalized_invoices, invoice_documents],
    asset_checks=[invoice_drafts_sql_checks, invoice_drafts_rules],
)
