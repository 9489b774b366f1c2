"""Settlement of finalized invoices: captured money allocated to invoices (sql/settle_invoices.sql).

Finalized invoices are immutable, so whether one is paid is derived from billing.invoice_payments, an
append-only ledger of allocations, through the view billing.invoice_balances (paid, balance and
settlement state: unpaid, partially_paid, paid, overpaid). A payment is matched to an invoice by the
invoice id or number in its metadata (Stripe) or notes (Razorpay), or those of its payment intent or
order; otherwise by the documented rule on customer, amount and window in the SQL file. Every
allocation is audited on its invoice (from and to settlement state) in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from billing_pipeline.payments import sql_text
from billing_pipeline.payments.ledger import lock


@dataclass(frozen=True)
class Settlement:
    allocations: int
    by_reference: int
    by_rule: int
    invoices_changed: int


def settle_invoices(conn: sa.Connection, *, actor: str) -> Settlement:
    """Bring every allocation up to date, in the caller's transaction (idempotent)."""
    lock(conn)
    row = conn.execute(sql_text("settle_invoices"), {"actor": actor}).one()
    return Settlement(row.allocations, row.by_reference, row.by_rule, row.invoices_changed)


def settlement_states(conn: sa.Connection) -> dict[str, int]:
    """How many finalized invoices are in each settlement state."""
    rows = conn.execute(
        sa.text("SELECT settlement_state, count(*) FROM billing.invoice_balances GROUP BY 1 ORDER BY 1")
    ).all()
    return {state: count for state, count in rows}
