"""Credit notes: corrections of a finalized invoice, and the refunds they make (sql/0044_credit_notes.sql).

A credit note credits the whole invoice (what remains creditable), chosen lines (each line's amount
not yet credited, with the invoice's tax rate), or an amount; always with a reason. In one transaction,
under a lock on the invoice's row (`issue`):
- it never credits more than remains creditable (total minus earlier credit notes; a trigger checks too);
- it takes the next number of its own gap-free series (CN-<year>-<n>, billing.invoice_number_counters);
- what the invoice still has due is lowered first (applied_minor); the rest (refund_minor) goes back to
  the customer: to the prepaid wallet (posted in the same transaction), or through the provider that
  took the payment, as a pending row of billing.refunds with the key `credit_note:<id>`;
- the credit note and the invoice's change are audited.
A provider refund is then sent (`send_refunds`, outside the transaction) with that key: a Stripe refund
with the key as its Idempotency-Key, a Razorpay refund looked up among the payment's refunds by the
credit note id in its notes before it is created. A crash in between leaves the row pending, and the
next `send_refunds` repeats the same request. The refund and the payment it came from are applied to
billing.payments, and settlement knows the refund (it does not take it off the payment).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import razorpay
import requests
import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Engine

from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.documents import invoices as documents
from billing_pipeline.invoicing import numbering
from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import razorpay_observation, stripe_observation
from billing_pipeline.payments.settlement import settle_invoices
from billing_pipeline.wallet import ledger as wallet

log = logging.getLogger(__name__)

ISSUER = "CN"
REFUND_METHODS = ("provider", "wallet")


class CreditNoteError(ValueError):
    """A credit note that cannot be issued as asked; nothing was written."""


@dataclass
class CreditNote:
    credit_note_id: int
    number: str
    invoice_number: str
    amount_minor: int
    applied_minor: int
    refund_minor: int
    refund_method: str | None
    currency: str
    refund: dict | None = None  # the billing.refunds row, once sent
    lines: list[dict] = field(default_factory=list)


_INVOICE = sa.text("""
    SELECT i.invoice_id, i.number, i.organisation_id, i.currency, i.status, i.tax_rate, i.total_minor,
           b.balance_minor, b.paid_minor, b.credited_minor, o.provider
    FROM billing.invoices i
    JOIN billing.organisations o ON o.organisation_id = i.organisation_id
    LEFT JOIN billing.invoice_balances b ON b.invoice_id = i.invoice_id
    WHERE i.number = :number
    FOR UPDATE OF i
""")

_LINES = sa.text("""
    SELECT l.line_id, l.kind, l.metric, l.amount_minor,
           l.amount_minor - COALESCE((SELECT sum(n.amount_minor) FROM billing.credit_note_lines n
                                      WHERE n.invoice_line_id = l.line_id), 0) AS creditable_minor
    FROM billing.invoice_lines l WHERE l.invoice_id = :invoice_id ORDER BY l.line_id
""")

# the captured payment allocated to the invoice with the most left to refund
_PAYMENT = sa.text("""
    SELECT p.payment_id, p.provider, p.object_type, p.object_id, p.amount_minor, p.amount_refunded_minor,
           p.amount_minor - p.amount_refunded_minor
               - COALESCE((SELECT sum(r.amount_minor) FROM billing.refunds r
                           WHERE r.payment_id = p.payment_id AND r.status = 'pending'), 0) AS refundable_minor
    FROM billing.payments p
    WHERE p.payment_id IN (SELECT payment_id FROM billing.invoice_payments WHERE invoice_id = :invoice_id
                           GROUP BY payment_id HAVING sum(amount_minor) > 0)
      AND p.status IN ('captured', 'partially_refunded')
    ORDER BY refundable_minor DESC, p.payment_id
    LIMIT 1
""")


def issue(
    engine: Engine,
    number: str,
    *,
    reason: str,
    actor: str,
    line_ids: list[int] | None = None,
    amount_minor: int | None = None,
    refund: str | None = None,
) -> CreditNote:
    """Issue a credit note against finalized invoice `number` (module docstring); raises CreditNoteError."""
    if not reason or not reason.strip():
        raise CreditNoteError("a credit note needs a reason")
    if line_ids and amount_minor is not None:
        raise CreditNoteError("credit chosen lines or an amount, not both")
    if amount_minor is not None and amount_minor <= 0:
        raise CreditNoteError("the amount of a credit note must be positive")
    if refund is not None and refund not in REFUND_METHODS:
        raise CreditNoteError(f"refund must be one of {', '.join(REFUND_METHODS)}")
    with engine.begin() as conn:
        inv = conn.execute(_INVOICE, {"number": number}).mappings().one_or_none()
        if inv is None:
            raise CreditNoteError(f"no invoice {number}")
        if inv["status"] != "finalized":
            raise CreditNoteError(
                f"invoice {number} is {inv['status']}: only a finalized invoice can be credited"
            )
        creditable = inv["total_minor"] - inv["credited_minor"]
        lines: list[dict] = []
        if line_ids:
            by_id = {
                r["line_id"]: dict(r)
                for r in conn.execute(_LINES, {"invoice_id": inv["invoice_id"]}).mappings()
            }
            unknown = [i for i in line_ids if i not in by_id]
            if unknown:
                raise CreditNoteError(f"invoice {number} has no line {', '.join(map(str, unknown))}")
            for line_id in dict.fromkeys(line_ids):
                line = by_id[line_id]
                if line["creditable_minor"] <= 0:
                    raise CreditNoteError(f"line {line_id} of invoice {number} is already fully credited")
                with_tax = int(
                    (Decimal(line["creditable_minor"]) * (1 + inv["tax_rate"])).quantize(
                        Decimal(1), ROUND_HALF_UP
                    )
                )  # minor units, rounded once, half-up
                lines.append(
                    {
                        "invoice_line_id": line_id,
                        "amount_minor": with_tax,
                        "description": f"{line['kind']} {line['metric'] or ''}".strip(),
                    }
                )
            scope, amount = "lines", sum(x["amount_minor"] for x in lines)
        elif amount_minor is not None:
            scope, amount = "amount", amount_minor
            lines = [{"invoice_line_id": None, "amount_minor": amount, "description": reason.strip()}]
        else:
            scope, amount = "invoice", creditable
            lines = [{"invoice_line_id": None, "amount_minor": amount, "description": "whole invoice"}]
        if amount <= 0:
            raise CreditNoteError(f"invoice {number} has nothing left to credit")
        if amount > creditable:
            raise CreditNoteError(
                f"invoice {number}: {amount} minor units is more than remains creditable ({creditable})"
            )
        applied = min(amount, max(inv["balance_minor"], 0))
        refund_minor = amount - applied
        if refund_minor and refund is None:
            raise CreditNoteError(
                f"invoice {number} is paid ({inv['paid_minor']} minor units): {refund_minor} would go back to "
                "the customer; choose --refund provider or --refund wallet"
            )
        method = refund if refund_minor else None
        payment = None
        if method == "provider":
            payment = conn.execute(_PAYMENT, {"invoice_id": inv["invoice_id"]}).mappings().one_or_none()
            if payment is None or payment["refundable_minor"] < refund_minor:
                raise CreditNoteError(
                    f"invoice {number}: no captured payment with {refund_minor} minor units left to refund; "
                    "use --refund wallet"
                )
        now = datetime.now(UTC)
        seq = numbering.reserve(conn, ISSUER, now.year, 1)
        cn_number = numbering.format_number(ISSUER, now.year, seq)
        note_id = conn.execute(
            sa.text("""
                INSERT INTO billing.credit_notes (number, invoice_id, organisation_id, currency, amount_minor,
                    applied_minor, refund_minor, refund_method, reason, scope, issued_at, issued_by)
                VALUES (:number, :invoice_id, :org, :currency, :amount, :applied, :refund, :method, :reason,
                        :scope, :now, :actor)
                RETURNING credit_note_id"""),
            {
                "number": cn_number,
                "invoice_id": inv["invoice_id"],
                "org": inv["organisation_id"],
                "currency": inv["currency"],
                "amount": amount,
                "applied": applied,
                "refund": refund_minor,
                "method": method,
                "reason": reason.strip(),
                "scope": scope,
                "now": now,
                "actor": actor,
            },
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO billing.credit_note_lines (credit_note_id, invoice_line_id, description, amount_minor)"
                " VALUES (:note, :invoice_line_id, :description, :amount_minor)"
            ),
            [{"note": note_id, **x} for x in lines],
        )
        note = CreditNote(
            note_id, cn_number, number, amount, applied, refund_minor, method, inv["currency"], lines=lines
        )
        refund_row = None
        if method == "wallet":
            posted = wallet.adjust(
                conn,
                inv["organisation_id"],
                refund_minor,
                inv["currency"],
                f"credit_note:{note_id}",
                actor=actor,
                reason=f"credit note {cn_number}",
            )
            refund_row = _insert_refund(
                conn, note_id, inv, "wallet", None, refund_minor, "succeeded", str(posted.entry_id)
            )
        elif method == "provider":
            refund_row = _insert_refund(
                conn, note_id, inv, payment["provider"], payment["payment_id"], refund_minor, "pending", None
            )
        note.refund = refund_row
        detail = {
            "invoice": number,
            "amount_minor": amount,
            "applied_minor": applied,
            "refund_minor": refund_minor,
            "refund_method": method,
            "reason": reason.strip(),
            "scope": scope,
            "lines": [x["invoice_line_id"] for x in lines if x["invoice_line_id"]],
        }
        record(
            conn,
            [
                AuditEntry("credit_note", cn_number, "issued", actor=actor, to_state="issued", detail=detail),
                AuditEntry(
                    "invoice",
                    str(inv["invoice_id"]),
                    "credited",
                    actor=actor,
                    from_state=str(inv["balance_minor"]),
                    to_state=str(inv["balance_minor"] - applied),
                    detail={"credit_note": cn_number, **detail},
                ),
                *(
                    [
                        AuditEntry(
                            "refund",
                            str(refund_row["refund_id"]),
                            "created",
                            actor=actor,
                            to_state=refund_row["status"],
                            detail={"credit_note": cn_number, **refund_row},
                        )
                    ]
                    if refund_row
                    else []
                ),
            ],
        )
        # rendered once, with the credit note it prints (billing.invoice_documents keeps it and its sha256);
        # without a seller in the catalog, later by invoice_documents or `invoice pdf`
        try:
            document = documents.credit_note_document(conn, note.credit_note_id, documents.seller(conn))
            documents.store(conn, [document], actor)
        except documents.NoSeller as exc:
            log.warning("credit note %s: no document yet (%s)", note.number, exc)
    return note


def _insert_refund(conn, note_id, inv, method, payment_id, amount, status, object_id) -> dict:
    return dict(
        conn.execute(
            sa.text("""
            INSERT INTO billing.refunds (credit_note_id, invoice_id, organisation_id, method, payment_id,
                idempotency_key, amount_minor, currency, status, provider_object_id, completed_at)
            VALUES (:note, :invoice_id, :org, :method, :payment_id, 'credit_note:' || :note, :amount, :currency,
                    :status, :object_id, CASE WHEN :status <> 'pending' THEN now() END)
            RETURNING refund_id, credit_note_id, method, payment_id, idempotency_key, amount_minor, currency,
                      status, provider_object_id"""),
            {
                "note": note_id,
                "invoice_id": inv["invoice_id"],
                "org": inv["organisation_id"],
                "method": method,
                "payment_id": payment_id,
                "amount": amount,
                "currency": inv["currency"],
                "status": status,
                "object_id": object_id,
            },
        )
        .mappings()
        .one()
    )


_PENDING = sa.text("""
    SELECT r.refund_id, r.credit_note_id, r.method, r.idempotency_key, r.amount_minor, r.currency,
           c.number AS credit_note_number, r.invoice_id, p.object_id AS payment_object_id
    FROM billing.refunds r
    JOIN billing.credit_notes c ON c.credit_note_id = r.credit_note_id
    JOIN billing.payments p ON p.payment_id = r.payment_id
    WHERE r.status = 'pending' AND (CAST(:note AS bigint) IS NULL OR r.credit_note_id = CAST(:note AS bigint))
    ORDER BY r.refund_id
""")


def send_refunds(
    engine: Engine,
    *,
    stripe_client: stripe.StripeClient | None,
    razorpay_client: razorpay.Client | None,
    actor: str,
    credit_note_id: int | None = None,
) -> list[dict]:
    """Send the pending provider refunds (one credit note's, or all), record them; the recorded rows."""
    with engine.connect() as conn:
        pending = [dict(r) for r in conn.execute(_PENDING, {"note": credit_note_id}).mappings()]
    results, objects = [], []
    for r in pending:
        out = {
            "refund_id": r["refund_id"],
            "status": "pending",
            "provider_object_id": None,
            "error_message": None,
        }
        try:
            if r["method"] == "stripe" and stripe_client is not None:
                refund = stripe_client.v1.refunds.create(
                    params={
                        "charge": r["payment_object_id"],
                        "amount": int(r["amount_minor"]),
                        "reason": "requested_by_customer",
                        "metadata": _tags(r),
                    },
                    options={"idempotency_key": r["idempotency_key"]},
                ).to_dict()
                charge = stripe_client.v1.charges.retrieve(r["payment_object_id"]).to_dict()
                objects.append(("stripe", [charge, refund]))
            elif r["method"] == "razorpay" and razorpay_client is not None:
                found = (
                    razorpay_client.payment.fetch_multiple_refund(r["payment_object_id"]).get("items") or []
                )
                refund = next(
                    (
                        x
                        for x in found
                        if isinstance(x.get("notes"), dict)
                        and x["notes"].get("credit_note_id") == str(r["credit_note_id"])
                    ),
                    None,
                )
                if refund is None:
                    refund = razorpay_client.payment.refund(
                        r["payment_object_id"],
                        {
                            "amount": int(r["amount_minor"]),
                            "receipt": r["credit_note_number"],
                            "notes": _tags(r),
                        },
                    )
                payment = razorpay_client.payment.fetch(r["payment_object_id"])
                objects.append(("razorpay", [payment, refund]))
            else:
                out["error_message"] = f"{r['method']} is not configured: the refund stays pending"
                results.append(out)
                continue
            out |= {"status": "succeeded", "provider_object_id": refund["id"]}
        except (
            stripe.CardError,
            stripe.InvalidRequestError,
            stripe.IdempotencyError,
            razorpay.errors.BadRequestError,
        ) as exc:
            out |= {"status": "failed", "error_message": str(exc)[:500]}
        except (
            stripe.StripeError,
            razorpay.errors.ServerError,
            razorpay.errors.GatewayError,
            requests.RequestException,
        ) as exc:
            log.warning("refund %s: outcome unknown (%s), sent again next time", r["idempotency_key"], exc)
            out["error_message"] = str(exc)[:500]
        results.append(out)
    if not results:
        return []
    with engine.begin() as conn:
        recorded = [
            dict(x)
            for x in conn.execute(
                sa.text("""
                WITH r AS (SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb))
                           AS r(refund_id bigint, status text, provider_object_id text, error_message text))
                UPDATE billing.refunds f
                SET status = r.status, provider_object_id = COALESCE(r.provider_object_id, f.provider_object_id),
                    error_message = r.error_message,
                    completed_at = CASE WHEN r.status <> 'pending' THEN now() END
                FROM r WHERE f.refund_id = r.refund_id AND f.status = 'pending'
                RETURNING f.refund_id, f.credit_note_id, f.method, f.status, f.amount_minor, f.currency,
                          f.provider_object_id, f.error_message"""),
                {"rows": json.dumps(results)},
            ).mappings()
        ]
        record(
            conn,
            [
                AuditEntry(
                    "refund",
                    str(x["refund_id"]),
                    x["status"],
                    actor=actor,
                    from_state="pending",
                    to_state=x["status"],
                    detail=x,
                )
                for x in recorded
                if x["status"] != "pending"
            ],
        )
        seen = [
            Seen(stripe_observation(o) if provider == "stripe" else razorpay_observation(o))
            for provider, objs in objects
            for o in objs
        ]
        if seen:
            apply_observations(conn, seen, via="sync", actor=actor)
            settle_invoices(conn, actor=actor)
    return recorded


def _tags(r: dict) -> dict:
    return {
        "credit_note_id": str(r["credit_note_id"]),
        "credit_note_number": r["credit_note_number"],
        "invoice_id": str(r["invoice_id"]),
    }
