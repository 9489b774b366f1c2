"""The demo's end of the month: one void (with its replacement), one credit note lowering an unpaid invoice,
a couple of cards that decline, then `payment_collection` for the month. Safe to run again: a month that
already has its void and credit note gets neither twice, and collection claims each invoice once.

Afterwards every finalized invoice of the month is collected (charged, or nothing left due), in dunning
(its charge declined: grace period open, retries scheduled), or waiting on a payment link (Razorpay):
every demo organisation has a provider. (An organisation without one would be asked to pay by
notification, and shows here as such.)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.fakes import stripe_fake
from billing_pipeline.invoicing import credit_notes, voids

ACTOR = "demo"
DECLINED = 2  # Stripe customers whose card declines when their invoice is collected

_UNPAID_STRIPE = sa.text("""
    SELECT b.number, b.total_minor, o.provider_customer_id
    FROM billing.invoice_balances b
    JOIN billing.organisations o USING (organisation_id)
    WHERE b.period_start = :month AND o.provider = 'stripe' AND b.payments = 0 AND b.total_minor >= 100
      AND NOT EXISTS (SELECT 1 FROM billing.collection_attempts c WHERE c.invoice_id = b.invoice_id)
    ORDER BY b.number
""")
_DONE = sa.text("""
    SELECT (SELECT count(*) FROM billing.invoice_voids v JOIN billing.invoices i USING (invoice_id)
            WHERE i.period_start = :month) AS voids,
           (SELECT count(*) FROM billing.credit_notes c JOIN billing.invoices i USING (invoice_id)
            WHERE i.period_start = :month) AS credit_notes
""")


def correct(
    engine: Engine, stripe_state: stripe_fake.FakeStripeState, month: date, on_step: Callable[[str], None]
) -> None:
    """The void, the credit note and the declining cards, once per month."""
    with engine.connect() as conn:
        done = conn.execute(_DONE, {"month": month}).mappings().one()
        unpaid = [dict(r) for r in conn.execute(_UNPAID_STRIPE, {"month": month}).mappings()]
    if not done["voids"] and unpaid:
        voided = voids.void_invoice(
            engine,
            unpaid[0]["number"],
            reason="demo: billed to the wrong legal entity",
            actor=ACTOR,
            replace=True,
        )
        on_step(f"void: {voided.number} voided, replaced by {voided.replacement_number}")
        unpaid = unpaid[1:]
    if not done["credit_notes"] and unpaid:
        # on an unpaid invoice: collection then charges what is left. (A refund through the provider is
        # not shown here: the next demo run starts fresh fakes, which would not know the refund.)
        note = credit_notes.issue(
            engine,
            unpaid[0]["number"],
            reason="demo: SLA credit for an outage",
            actor=ACTOR,
            amount_minor=unpaid[0]["total_minor"] // 10,
        )
        on_step(
            f"credit note: {note.number} on {unpaid[0]['number']}, {note.amount_minor} minor units off the"
            " amount due"
        )
        unpaid = unpaid[1:]
    for row in unpaid[:DECLINED]:
        stripe_state.declined_customers.add(row["provider_customer_id"])


_STATES = sa.text("""
    SELECT CASE WHEN i.status = 'void' THEN 'void'
                WHEN c.status = 'failed' AND g.status = 'open' THEN 'in dunning'
                WHEN c.status = 'link_sent' AND b.balance_minor > 0 THEN 'waiting on a payment link'
                WHEN b.balance_minor <= 0 THEN 'collected'
                WHEN c.status = 'skipped' THEN 'asked to pay (no provider)'
                ELSE coalesce(c.status, 'not collected') END AS state,
           count(*) AS invoices
    FROM billing.invoices i
    LEFT JOIN billing.invoice_balances b ON b.invoice_id = i.invoice_id
    LEFT JOIN billing.collection_attempts c ON c.invoice_id = i.invoice_id
    LEFT JOIN billing.grace_periods g ON g.invoice_id = i.invoice_id
    WHERE i.period_start = :month AND i.status <> 'draft'
    GROUP BY 1 ORDER BY 1
""")


def collection_states(engine: Engine, month: date) -> dict[str, int]:
    """The month's invoices by where their collection stands."""
    with engine.connect() as conn:
        return {r.state: r.invoices for r in conn.execute(_STATES, {"month": month})}
