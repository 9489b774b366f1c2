"""The month close: per currency, what was invoiced, credited, collected and refunded, the outstanding
balance at the month's start and end, wallet movements and open findings; a tie-out
(end = start + invoiced - credited - collected + refunded, to the minor unit); and the report finance
opens without tools (HTML and XLSX under BILLING_HOME/reports/YYYY-MM/), amounts in major units
formatted for the locale with Babel.

Credited is the month's credit notes (billing.credit_notes); refunded, the negative payment
allocations and the refunds of credit notes (billing.refunds, provider or wallet).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import sqlalchemy as sa
from babel.numbers import format_currency

from billing_pipeline.money import from_minor
from billing_pipeline.sql_files import statement
from billing_pipeline.utc import utc_midnight

FIGURES = (
    "outstanding_start",
    "invoiced",
    "credited",
    "collected",
    "refunded",
    "outstanding_end",
    "wallet_top_up",
    "wallet_call_charge",
    "wallet_adjustment",
    "open_findings",
    "open_findings_amount",
)
LABELS = {
    "outstanding_start": "Outstanding at month start",
    "invoiced": "Invoiced",
    "credited": "Credited",
    "collected": "Collected",
    "refunded": "Refunded",
    "outstanding_end": "Outstanding at month end",
    "wallet_top_up": "Wallet top-ups",
    "wallet_call_charge": "Wallet call charges",
    "wallet_adjustment": "Wallet adjustments",
    "open_findings": "Open findings (count)",
    "open_findings_amount": "Open findings (amount)",
}


@dataclass
class CurrencyClose:
    currency: str
    figures: dict[str, int] = field(default_factory=dict)

    def get(self, name: str) -> int:
        return self.figures.get(name, 0)

    @property
    def expected_end(self) -> int:
        return (
            self.get("outstanding_start")
            + self.get("invoiced")
            - self.get("credited")
            - self.get("collected")
            + self.get("refunded")
        )

    @property
    def difference(self) -> int:
        return self.get("outstanding_end") - self.expected_end


@dataclass
class MonthClose:
    month: date
    currencies: list[CurrencyClose]

    @property
    def ties_out(self) -> bool:
        return all(c.difference == 0 for c in self.currencies)

    def as_metadata(self) -> dict:
        return {
            c.currency: {**{n: c.get(n) for n in FIGURES}, "difference": c.difference}
            for c in self.currencies
        }


def month_close(conn: sa.Connection, month: date) -> MonthClose:
    start = month.replace(day=1)
    end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    rows = conn.execute(
        statement("billing_pipeline.closing", "month_figures"),
        {"start": utc_midnight(start), "end": utc_midnight(end)},
    ).all()
    by_currency: dict[str, CurrencyClose] = {}
    for label, currency, amount in rows:
        figures = by_currency.setdefault(currency, CurrencyClose(currency)).figures
        figures[label] = figures.get(label, 0) + int(amount)  # refunded comes from two sources
    return MonthClose(start, [by_currency[c] for c in sorted(by_currency)])


def _amount(name: str, minor: int, currency: str, locale: str) -> str:
    if name == "open_findings":
        return str(minor)
    return format_currency(from_minor(minor, currency), currency, locale=locale)


def write_report(close: MonthClose, reports_dir: Path, locale: str = "en_US") -> tuple[Path, Path]:
    """month_close.html and month_close.xlsx under reports_dir/YYYY-MM/; returns their paths."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    folder = reports_dir / f"{close.month:%Y-%m}"
    folder.mkdir(parents=True, exist_ok=True)
    title = f"Month close {close.month:%Y-%m}"
    status = "Ties out" if close.ties_out else "DOES NOT TIE OUT"
    parts = [
        f"<!doctype html><html lang='{html.escape(locale.replace('_', '-'))}'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif}}td,th{{padding:4px 12px;"
        f"text-align:right}}th:first-child,td:first-child{{text-align:left}}</style></head><body>",
        f"<h1>{title}</h1><p id='status'>{status}</p>",
    ]
    for c in close.currencies:
        parts.append(
            f"<h2>{c.currency}</h2><table id='close-{c.currency}'><tr><th>Figure</th><th>Amount</th></tr>"
        )
        for name in FIGURES:
            parts.append(
                f"<tr><td>{LABELS[name]}</td><td>{html.escape(_amount(name, c.get(name), c.currency, locale))}"
                "</td></tr>"
            )
        parts.append(
            f"<tr><td>Difference (tie-out)</td><td>{html.escape(_amount('d', c.difference, c.currency, locale))}"
            "</td></tr></table>"
        )
    parts.append("</body></html>")
    html_path = folder / "month_close.html"
    html_path.write_text("".join(parts), encoding="utf-8")

    book = Workbook()
    sheet = book.active
    sheet.title = f"{close.month:%Y-%m}"
    sheet.append([title, status])
    sheet["A1"].font = Font(bold=True)
    sheet.append(["Currency", "Figure", "Amount", "Amount (minor units)"])
    for c in close.currencies:
        for name in (*FIGURES, "difference"):
            minor = c.difference if name == "difference" else c.get(name)
            label = "Difference (tie-out)" if name == "difference" else LABELS[name]
            sheet.append([c.currency, label, _amount(name, minor, c.currency, locale), minor])
    for column, width in zip("ABCD", (10, 30, 22, 22), strict=True):
        sheet.column_dimensions[column].width = width
    xlsx_path = folder / "month_close.xlsx"
    book.save(xlsx_path)
    return html_path, xlsx_path
