"""Voiding a finalized, unpaid invoice (sql/0045_invoice_voids.sql), with an optional replacement.

In one transaction, under a lock on the invoice's row: the invoice must be finalized, with no money
allocated to it and no credit note (a paid invoice is corrected with a credit note instead). Its status
becomes `void` (its number stays used; nothing else on it changes), billing.invoice_voids records the
reason (before the status moves: the trigger insists), and the claims of the late events its lines billed are released, so that usage is billable again
on a later invoice. With `replace`, a replacement invoice is issued at once: the same lines, a new number
of the same series, finalized, and its late lines claim their events again. Both are audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.invoicing import numbering


class VoidError(ValueError):
    """An invoice that cannot be voided as asked; nothing was written."""


@dataclass(frozen=True)
class Voided:
    invoice_id: int
    number: str
    events_released: int
    replacement_number: str | None = None
    replacement_invoice_id: int | None = None


_INVOICE = sa.text("""
    SELECT i.invoice_id, i.number, i.status, i.issuer, i.organisation_id, i.total_minor, i.currency,
           COALESCE(b.paid_minor, 0) AS paid_minor, COALESCE(b.payments, 0) AS payments,
           COALESCE(b.credited_minor, 0) AS credited_minor
    FROM billing.invoices i LEFT JOIN billing.invoice_balances b ON b.invoice_id = i.invoice_id
    WHERE i.number = :number
    FOR UPDATE OF i
""")

_RELEASE = sa.text("""
    DELETE FROM billing.invoice_billed_events b
    USING billing.invoice_lines l
    WHERE b.line_id = l.line_id AND l.invoice_id = :invoice_id
""")

_COPY_INVOICE = sa.text("""
    INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, status, issuer, plan_id,
        plan_code, plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor,
        credits_applied_minor, total_minor, discounts_applied, problems, build_id, created_by)
    SELECT organisation_id, period_start, period_end, currency, 'draft', issuer, plan_id, plan_code, plan_version,
           plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor, credits_applied_minor, total_minor,
           discounts_applied, problems, build_id, :actor
    FROM billing.invoices WHERE invoice_id = :invoice_id
    RETURNING invoice_id
""")

_COPY_LINES = sa.text("""
    WITH src AS (
        SELECT * FROM billing.invoice_lines WHERE invoice_id = :old ORDER BY line_id
    ), copied AS (
        INSERT INTO billing.invoice_lines (invoice_id, kind, metric, aggregation, units, model, amount_unrounded,
            amount_minor, original_period_start, charge)
        SELECT :new, kind, metric, aggregation, units, model, amount_unrounded, amount_minor,
               original_period_start, charge
        FROM src
        RETURNING line_id, kind, metric, original_period_start
    )
    INSERT INTO billing.invoice_late_events (line_id, event_id, occurred_at, ingested_at, quantity)
    SELECT c.line_id, e.event_id, e.occurred_at, e.ingested_at, e.quantity
    FROM billing.invoice_late_events e
    JOIN src s ON s.line_id = e.line_id
    JOIN copied c ON c.kind = s.kind AND c.metric IS NOT DISTINCT FROM s.metric
                 AND c.original_period_start IS NOT DISTINCT FROM s.original_period_start
""")


def void_invoice(engine: Engine, number: str, *, reason: str, actor: str, replace: bool = False) -> Voided:
    """Void finalized, unpaid invoice `number` (module docstring); raises VoidError."""
    if not reason or not reason.strip():
        raise VoidError("a void needs a reason")
    with engine.begin() as conn:
        inv = conn.execute(_INVOICE, {"number": number}).mappings().one_or_none()
        if inv is None:
            raise VoidError(f"no invoice {number}")
        if inv["status"] != "finalized":
            raise VoidError(f"invoice {number} is {inv['status']}: only a finalized invoice can be voided")
        if inv["payments"] or inv["paid_minor"]:
            raise VoidError(
                f"invoice {number} has payments ({inv['paid_minor']} minor units): issue a credit "
                "note instead"
            )
        if inv["credited_minor"]:
            raise VoidError(f"invoice {number} has credit notes: credit the rest instead of voiding it")
        collecting = conn.execute(
            sa.text("SELECT status FROM billing.collection_attempts WHERE invoice_id = :i AND status = 'pending'"),
            {"i": inv["invoice_id"]},
        ).scalar_one_or_none()
        if collecting:
            raise VoidError(
                f"invoice {number} is being collected (a provider call whose result is not recorded yet): "
                "run payment_collection for its month first"
            )
        released = conn.execute(_RELEASE, {"invoice_id": inv["invoice_id"]}).rowcount
        conn.execute(  # recorded first: the immutability trigger lets a void through only then
            sa.text(
                "INSERT INTO billing.invoice_voids (invoice_id, number, reason, voided_by, events_released)"
                " VALUES (:i, :n, :reason, :actor, :released)"
            ),
            {
                "i": inv["invoice_id"],
                "n": number,
                "reason": reason.strip(),
                "actor": actor,
                "released": released,
            },
        )
        conn.execute(
            sa.text("UPDATE billing.invoices SET status = 'void' WHERE invoice_id = :i"),
            {"i": inv["invoice_id"]},
        )
        replacement_id = replacement_number = None
        if replace:
            replacement_id = conn.execute(
                _COPY_INVOICE, {"invoice_id": inv["invoice_id"], "actor": actor}
            ).scalar_one()
            conn.execute(_COPY_LINES, {"old": inv["invoice_id"], "new": replacement_id})
            now = datetime.now(UTC)
            replacement_number = numbering.format_number(
                inv["issuer"], now.year, numbering.reserve(conn, inv["issuer"], now.year, 1)
            )
            conn.execute(
                sa.text(
                    "UPDATE billing.invoices SET status = 'finalized', number = :n, finalized_at = :now,"
                    " finalized_by = :actor WHERE invoice_id = :i"
                ),
                {"n": replacement_number, "now": now, "actor": actor, "i": replacement_id},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO billing.invoice_replacements (voided_invoice_id, replacement_invoice_id,"
                    " replaced_by) VALUES (:i, :r, :actor)"
                ),
                {"i": inv["invoice_id"], "r": replacement_id, "actor": actor},
            )
        detail = {
            "reason": reason.strip(),
            "total_minor": inv["total_minor"],
            "currency": inv["currency"],
            "events_released": released,
            "replacement": replacement_number,
        }
        record(
            conn,
            [
                AuditEntry(
                    "invoice",
                    str(inv["invoice_id"]),
                    "voided",
                    actor=actor,
                    from_state="finalized",
                    to_state="void",
                    detail={"number": number, **detail},
                ),
                *(
                    [
                        AuditEntry(
                            "invoice",
                            str(replacement_id),
                            "finalized",
                            actor=actor,
                            from_state="draft",
                            to_state="finalized",
                            detail={"number": replacement_number, "replaces": number},
                        )
                    ]
                    if replace
                    else []
                ),
            ],
        )
    if replacement_number is not None:
        # finalized now, outside the month's run: its document is rendered now too, once like every invoice's
        from billing_pipeline.documents.invoices import render_invoices

        render_invoices(engine, actor, number=replacement_number)
    return Voided(inv["invoice_id"], number, released, replacement_number, replacement_id)
