"""Finance's export of a month's documents: invoices (void ones too) and credit notes, as CSV."""

from __future__ import annotations

import csv
from datetime import date
from typing import TextIO

from sqlalchemy.engine import Engine

from billing_pipeline import sql_files

COLUMNS = (
    "document",
    "number",
    "invoice_number",
    "organisation_id",
    "status",
    "issued_at",
    "currency",
    "total_minor",
    "credited_minor",
    "refunded_minor",
    "paid_minor",
    "due_minor",
    "refund_method",
    "reason",
    "replaced_by",
)


def month_documents(engine: Engine, period_start: date) -> list[dict]:
    """One row per invoice and credit note of the month (invoicing/sql/month_documents.sql)."""
    with engine.connect() as conn:
        statement = sql_files.statement("billing_pipeline.invoicing", "month_documents")
        return [dict(r) for r in conn.execute(statement, {"period_start": period_start}).mappings()]


def write_csv(rows: list[dict], out: TextIO) -> None:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
