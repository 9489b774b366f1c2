"""Finalized invoices -> PDF documents, set-based: two queries for every invoice of a month, one insert."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.documents import render
from billing_pipeline.sql_files import statement

_PKG = "billing_pipeline.documents"
_INSERT = sa.text("""
    INSERT INTO billing.invoice_documents (document_kind, number, invoice_id, organisation_id, currency,
                                           total_minor, sha256, pdf, renderer, rendered_by)
    SELECT :kind, :number, :invoice_id, organisation_id, :currency, :total_minor, :sha256, :pdf, :renderer, :actor
    FROM billing.invoices WHERE invoice_id = :invoice_id
    ON CONFLICT (document_kind, number, organisation_id) DO NOTHING
""")
_STORED = sa.text(
    "SELECT number, sha256, pdf FROM billing.invoice_documents WHERE document_kind = :kind AND number = :number"
)


def _detail_lines(details: dict | None) -> list[str]:
    """A party's catalog billing details as printed lines: address, tax id, e-mail."""
    details = details or {}
    lines = list(details.get("address") or ())
    if details.get("tax_id"):
        lines.append(f"Tax id: {details['tax_id']}")
    if details.get("email"):
        lines.append(details["email"])
    return lines


class NoSeller(RuntimeError):
    """Documents need the issuing company, and the catalog has no `seller` section yet."""

    def __init__(self) -> None:
        super().__init__(
            "no seller in the catalog: add a `seller:` section (name, address, tax_id, email) and "
            "`billing-pipeline catalog apply` it; the documents are rendered then"
        )


def seller(conn: sa.Connection) -> render.Party:
    """The issuing company: the catalog's `seller` section (billing.seller); NoSeller without one."""
    row = conn.execute(sa.text("SELECT name, details FROM billing.seller")).one_or_none()
    if row is None:
        raise NoSeller()
    return render.Party(row.name, tuple(_detail_lines(row.details)))


def customer(row) -> render.Party:
    """The organisation as billed: its catalog billing details, its id and its provider's customer id."""
    details = row["billing_details"] or {}
    lines = _detail_lines(details) + [f"Customer id: {row['organisation_id']}"]
    if row["provider_customer_id"]:
        lines.append(f"{row['provider'].capitalize()} customer: {row['provider_customer_id']}")
    return render.Party(details.get("legal_name") or row["customer_name"], tuple(lines))


def _describe(line) -> str:
    if line["kind"] == "commitment_true_up":
        return "Minimum commitment true-up"
    name = line["metric_name"] or line["metric"]
    if line["kind"] == "late_usage":
        return f"{name}: late usage of {line['original_period_start']:%Y-%m}"
    return name


def _unit_price(line) -> Decimal | None:
    units = line["units"]
    if units is None or units == 0:
        return None
    return Decimal(line["amount_unrounded"]) / Decimal(units)


def invoice_document(inv, lines, issuer: render.Party) -> render.Document:
    summary: list[tuple[str, int]] = [("Subtotal", inv["subtotal_minor"])]
    applied = inv["discounts_applied"] or []
    if applied:
        summary += [(f"Discount {d.get('code', '')}".strip(), -int(d["amount_minor"])) for d in applied]
    elif inv["discount_minor"]:
        summary.append(("Discounts", -inv["discount_minor"]))
    rate = (Decimal(inv["tax_rate"]) * 100).normalize()
    summary.append((f"Tax ({rate:f}%)", inv["tax_minor"]))
    if inv["credits_applied_minor"]:
        summary.append(("Credits applied", -inv["credits_applied_minor"]))
    summary += [("Total", inv["total_minor"]), ("Amount due", inv["total_minor"])]
    last_day = date.fromordinal(inv["period_end"].toordinal() - 1)
    return render.Document(
        kind="invoice",
        title="Invoice",
        number=inv["number"],
        issued_at=inv["finalized_at"],
        currency=inv["currency"],
        seller=issuer,
        customer=customer(inv),
        lines=[render.Line(_describe(ln), ln["units"], _unit_price(ln), ln["amount_minor"]) for ln in lines],
        summary=summary,
        facts=[
            ("Period", f"{inv['period_start']:%Y-%m-%d} to {last_day:%Y-%m-%d}"),
            ("Plan", f"{inv['plan_code']} v{inv['plan_version']}"),
        ],
        total_minor=inv["total_minor"],
    )


_CREDIT_NOTE = sa.text("""
    SELECT c.number, c.invoice_id, c.currency, c.amount_minor, c.applied_minor, c.refund_minor, c.refund_method,
           c.reason, c.issued_at, i.number AS invoice_number, c.organisation_id, o.name AS customer_name,
           o.provider, o.provider_customer_id, o.billing_details
    FROM billing.credit_notes c
    JOIN billing.invoices i ON i.invoice_id = c.invoice_id
    JOIN billing.organisations o ON o.organisation_id = c.organisation_id
    WHERE c.credit_note_id = :id
""")
_CREDIT_NOTE_LINES = sa.text(
    "SELECT description, amount_minor FROM billing.credit_note_lines WHERE credit_note_id = :id"
    " ORDER BY credit_note_line_id"
)


def credit_note_document(
    conn: sa.Connection, credit_note_id: int, issuer: render.Party
) -> tuple[render.Document, int]:
    """A credit note as a document (and the id of the invoice it credits), from its stored rows."""
    cn = conn.execute(_CREDIT_NOTE, {"id": credit_note_id}).mappings().one()
    lines = conn.execute(_CREDIT_NOTE_LINES, {"id": credit_note_id}).mappings().all()
    summary = [("Credited", cn["amount_minor"]), ("Taken off the amount due", cn["applied_minor"])]
    if cn["refund_minor"]:
        summary.append((f"Refunded ({cn['refund_method']})", cn["refund_minor"]))
    document = render.Document(
        kind="credit_note",
        title="Credit note",
        number=cn["number"],
        issued_at=cn["issued_at"],
        currency=cn["currency"],
        seller=issuer,
        customer=customer(cn),
        lines=[render.Line(ln["description"], None, None, ln["amount_minor"]) for ln in lines],
        summary=summary,
        facts=[("Credits invoice", cn["invoice_number"]), ("Reason", cn["reason"])],
        total_minor=cn["amount_minor"],
    )
    return document, cn["invoice_id"]


@dataclass(frozen=True)
class Rendered:
    number: str
    sha256: str
    total_minor: int
    currency: str


def store(conn: sa.Connection, docs: list[tuple[render.Document, int]], actor: str) -> list[Rendered]:
    """Render and insert documents (document, invoice id) in the caller's transaction, audited."""
    rows, done = [], []
    for doc, invoice_id in docs:
        pdf = render.render(doc)
        digest = render.sha256(pdf)
        rows.append(
            {
                "kind": doc.kind,
                "number": doc.number,
                "invoice_id": invoice_id,
                "currency": doc.currency,
                "total_minor": doc.total_minor,
                "sha256": digest,
                "pdf": pdf,
                "renderer": render.RENDERER,
                "actor": actor,
            }
        )
        done.append(Rendered(doc.number, digest, doc.total_minor, doc.currency))
    if rows:
        conn.execute(_INSERT, rows)
        record(
            conn,
            [
                AuditEntry(
                    r["kind"],
                    r["number"],
                    "document_rendered",
                    actor,
                    detail={"sha256": r["sha256"], "renderer": r["renderer"]},
                )
                for r in rows
            ],
        )
    return done


_CREDIT_NOTES_TO_RENDER = sa.text("""
    SELECT c.credit_note_id FROM billing.credit_notes c JOIN billing.invoices i ON i.invoice_id = c.invoice_id
    WHERE (CAST(:period_start AS date) IS NULL OR i.period_start = :period_start)
      AND (CAST(:number AS text) IS NULL OR c.number = :number)
      AND NOT EXISTS (SELECT 1 FROM billing.invoice_documents d
                      WHERE d.document_kind = 'credit_note' AND d.number = c.number)
    ORDER BY c.number
""")


def render_documents(
    engine: Engine, actor: str, *, period_start: date | None = None, number: str | None = None
) -> list[Rendered]:
    """Render every finalized invoice and credit note (of the month's invoices, or the one number) that has
    no document yet: those finalized or issued while the catalog had no seller, or in a run that stopped."""
    with engine.begin() as conn:
        params = {"period_start": period_start, "number": number}
        invoices = conn.execute(statement(_PKG, "invoices_to_render"), params).mappings().all()
        notes = conn.execute(_CREDIT_NOTES_TO_RENDER, params).scalars().all()
        if not invoices and not notes:
            return []
        by_invoice = defaultdict(list)
        for ln in conn.execute(
            statement(_PKG, "invoice_lines"), {"ids": [i["invoice_id"] for i in invoices]}
        ).mappings():
            by_invoice[ln["invoice_id"]].append(ln)
        issuer = seller(conn)
        return store(
            conn,
            [(invoice_document(i, by_invoice[i["invoice_id"]], issuer), i["invoice_id"]) for i in invoices]
            + [credit_note_document(conn, note_id, issuer) for note_id in notes],
            actor,
        )


def stored_pdf(conn: sa.Connection, number: str, kind: str = "invoice") -> tuple[bytes, str] | None:
    """The stored PDF and its sha256, checked against the bytes (ValueError when they differ)."""
    row = conn.execute(_STORED, {"kind": kind, "number": number}).one_or_none()
    if row is None:
        return None
    pdf = bytes(row.pdf)
    if render.sha256(pdf) != row.sha256:
        raise ValueError(f"{kind} {number}: the stored document does not match its sha256")
    return pdf, row.sha256
