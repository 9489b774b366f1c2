"""Payments: Stripe and Razorpay webhooks and syncs, invoice settlement and payment reconciliation.

Plain modules, no Dagster (the wiring is in billing_pipeline/defs/payments):

- `webhooks`: signature verification over the raw body and storage in billing.webhook_inbox.
- `inbox`: the processing framework (handler registry per provider, attempts with exponential
  backoff, dead letters, replay); `handlers` registers Stripe's and Razorpay's.
- `states`, `objects`, `ledger`: the forward-only state machine, provider objects normalized, and the
  set-based upsert into billing.payments.
- `sync`: the daily provider listings (the truth; webhooks are early hints).
- `settlement`: payments allocated to finalized invoices (billing.invoice_payments, billing.invoice_balances).
- `reconciliation`: provider records against payments against invoices, into recon.discrepancies.
- `demo`: seeds the fake providers with a month that shows every discrepancy kind.
- `cli`: `billing-pipeline webhooks ...` and `billing-pipeline recon export`.

SQL that is more than a line lives in `payments/sql/*.sql`, with bound parameters only.
"""

from __future__ import annotations


import sqlalchemy as sa

from billing_pipeline import sql_files



def sql_text(name: str) -> sa.TextClause:
    """The statement in payments/sql/<name>.sql."""
    return sql_files.statement(__name__, name)
