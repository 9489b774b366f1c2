"""The one helper every reconciliation asset uses for its findings metadata (billing_pipeline.findings)."""

from __future__ import annotations

from datetime import date

import dagster as dg
from sqlalchemy.engine import Engine

from billing_pipeline import findings


def findings_metadata(engine: Engine, source: str, start: date, end: date) -> dict:
    """Open findings of `source` by kind and age band (0-1, 2-7, 8-30, >30 days) with amounts per
    currency, beside the ones first seen in [start, end)."""
    with engine.connect() as conn:
        m = findings.metadata(conn, source, start, end)
    return {
        "open_findings": m["open_findings"],
        "new_findings": m["new_findings"],
        "open_findings_by_age": dg.MetadataValue.md(m["open_findings_table"]),
        "new_findings_by_kind": dg.MetadataValue.md(m["new_findings_table"]),
        "open_findings_by_age_json": dg.MetadataValue.json(m["open_findings_by_age"]),
    }
