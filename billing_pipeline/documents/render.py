"""A billing document (invoice, credit note, ...) as a PDF, with fpdf2 (pure Python, core fonts).

`Document` is what any kind of document prints: a title, a number, dates, the seller and the customer,
lines with units and unit price, then summary rows (subtotal, discounts, tax, credits, total, amount
due). Amounts are integer minor units, printed with the currency's own number of decimals
(JPY 0, USD 2, KWD 3). Rendering is deterministic: the same Document gives the same bytes (the PDF's
creation date is the document's issue time), so a stored sha256 proves a copy unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from importlib.metadata import version

from billing_pipeline.money import from_minor, minor_unit_exponent

# fpdf is imported where a document is drawn: a process that loads the definitions and draws none
# (every run worker, the daemon, the UI) does not pay its half second
RENDERER = f"fpdf2 {version('fpdf2')}"


@dataclass(frozen=True)
class Party:
    name: str
    lines: tuple[str, ...] = ()  # identifiers and address lines, printed under the name


@dataclass(frozen=True)
class Line:
    description: str
    units: Decimal | None
    unit_price: Decimal | None  # in major units, unrounded (tiered prices print their average)
    amount_minor: int


@dataclass(frozen=True)
class Document:
    kind: str  # 'invoice', 'credit_note'
    title: str  # 'Invoice', 'Credit note'
    number: str
    issued_at: datetime
    currency: str
    seller: Party
    customer: Party
    lines: list[Line]
    summary: list[tuple[str, int]]  # (label, signed minor units), printed in order under the lines
    facts: list[tuple[str, str]] = field(default_factory=list)  # period, references...
    total_minor: int = 0


def money(minor: int, currency: str) -> str:
    """Minor units in major units with the currency's decimals and thousands separators: 1,234.567."""
    exponent = minor_unit_exponent(currency)
    return f"{from_minor(minor, currency):,.{exponent}f}"


def _number(value: Decimal | None, max_places: int = 6) -> str:
    if value is None:
        return ""
    q = value.quantize(Decimal(1).scaleb(-max_places)).normalize()
    text = f"{q:,f}"
    return text


def _latin1(text: str) -> str:
    # the core PDF fonts cover Latin-1; anything else prints as '?' rather than failing the run
    return text.encode("latin-1", "replace").decode("latin-1")


def render(doc: Document) -> bytes:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    pdf = FPDF(format="A4")
    pdf.set_creation_date(doc.issued_at)
    pdf.set_title(_latin1(f"{doc.title} {doc.number}"))
    pdf.set_author(_latin1(doc.seller.name))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def text(value: str, *, size: int = 10, style: str = "", w: float = 0, align: str = "L", ln: bool = True):
        pdf.set_font("Helvetica", style=style, size=size)
        pdf.cell(
            w,
            5.5,
            _latin1(value),
            align=align,
            new_x=XPos.LMARGIN if ln else XPos.RIGHT,
            new_y=YPos.NEXT if ln else YPos.TOP,
        )

    text(f"{doc.title} {doc.number}", size=16, style="B")
    pdf.ln(2)
    for label, value in [("Issued", f"{doc.issued_at:%Y-%m-%d}"), *doc.facts, ("Currency", doc.currency)]:
        text(f"{label}:", w=35, style="B", ln=False)
        text(value)
    pdf.ln(3)
    top = pdf.get_y()
    for i, (heading, party) in enumerate((("From", doc.seller), ("Bill to", doc.customer))):
        pdf.set_xy(pdf.l_margin + i * width / 2, top)
        pdf.set_font("Helvetica", style="B", size=10)
        pdf.multi_cell(
            width / 2,
            5.5,
            _latin1("\n".join([heading, party.name, *party.lines])),
            new_x=XPos.RIGHT,
            new_y=YPos.TOP,
        )
    pdf.set_y(top + 5.5 * (2 + max(len(doc.seller.lines), len(doc.customer.lines))) + 4)

    columns = (
        ("Description", 0.46, "L"),
        ("Units", 0.16, "R"),
        ("Unit price", 0.18, "R"),
        (f"Amount ({doc.currency})", 0.20, "R"),
    )
    for name, share, align in columns:
        text(name, style="B", w=width * share, align=align, ln=False)
    pdf.ln()
    for line in doc.lines:
        cells = (
            line.description,
            _number(line.units),
            _number(line.unit_price),
            money(line.amount_minor, doc.currency),
        )
        for (_, share, align), value in zip(columns, cells, strict=True):
            text(value, w=width * share, align=align, ln=False)
        pdf.ln()
    pdf.ln(2)
    for label, minor in doc.summary:
        bold = "B" if label in ("Total", "Amount due") else ""
        text(label, style=bold, w=width * 0.80, align="R", ln=False)
        text(f"{money(minor, doc.currency)}", style=bold, w=width * 0.20, align="R")
    return bytes(pdf.output())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def issue_date(value: datetime | date) -> str:
    return f"{value:%Y-%m-%d}"
