"""What proves the movement: reconciliation of a day (edge against warehouse) and safe retention.

Both stage the edge rows they look at into PostgreSQL (COPY) and compare there, set-based: one
query for the day, not a lookup per event.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline import findings, markdown
from billing_pipeline import edge_store
from billing_pipeline.ingestion.mover import stage_edge_rows, sql_text

SOURCE = "event_reconciliation"
_PRESENCE = sql_text("edge_in_warehouse.sql")
_GROUPS = sql_text("event_groups.sql")
# An unprocessed edge row is only "missing" once the mover has had its chance: its hour has passed
# and this much time on top (the hourly schedule runs a few minutes after the hour).
PENDING_GRACE = timedelta(hours=2)


@dataclass
class DayReconciliation:
    day: date
    edge_rows: int
    missing: int
    pending: int
    mismatched_groups: list[dict] = field(default_factory=list)


def groups_markdown(groups: list[dict], limit: int = 10) -> str:
    """The largest differences as a Markdown table (for asset metadata)."""
    columns = ["organisation_id", "project_id", "metric", "hour", "edge_count", "warehouse_count",
               "edge_quantity", "warehouse_quantity"]
    return markdown.table(
        ["organisation", "project", "metric", "hour", "edge", "warehouse", "edge qty", "warehouse qty"],
        ([g[c] for c in columns] for g in groups),
        empty="No differences: every edge event is in the warehouse or in quarantine.",
        limit=limit,
    )


def _day_rows(edge: sqlite3.Connection, day: date) -> list[tuple]:
    cur = edge.cursor()
    cur.row_factory = None
    return cur.execute(
        "SELECT " + ", ".join(edge_store.STAGED_COLUMNS) + ", processed_at FROM events"
        " WHERE received_at >= ? AND received_at < ?",
        (day.isoformat(), (day + timedelta(days=1)).isoformat()),
    ).fetchall()


def reconcile_day(engine: Engine, edge: sqlite3.Connection, day: date, *, now: datetime | None = None) -> DayReconciliation:
    """Write the day's `missing_event` findings (replacing this source's rows for the day)."""
    now = now or datetime.now(timezone.utc)
    pending_cutoff = edge_store.utc_text(now - PENDING_GRACE)
    rows = _day_rows(edge, day)
    day_start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    with engine.begin() as conn:
        stage_edge_rows(conn, rows, with_processed_at=True)
        conn.connection.cursor().execute(_PRESENCE)
        groups = [
            dict(r._mapping)
            for r in conn.execute(
                sa.text(_GROUPS), {"day_start": day_start, "day_end": day_start + timedelta(days=1)}
            )
        ]
        conn.execute(
            sa.text("DELETE FROM recon.discrepancies WHERE source = :source AND recon_date = :day"),
            {"source": SOURCE, "day": day},
        )
        missing = conn.execute(
            sa.text(
                """
                INSERT INTO recon.discrepancies (recon_date, source, kind, organisation_id, reference, detail)
                SELECT :day, :source, 'missing_event', organisation_id, coalesce(event_id, 'edge rowid ' || edge_rowid),
                    CASE WHEN processed_at IS NOT NULL
                         THEN 'marked processed at the edge (' || processed_at || ') but absent from the warehouse'
                         ELSE 'not moved although its hour has passed' END
                    || format(': project %s, metric %s, quantity %s, received %s',
                              project_id, metric, quantity, received_at)
                FROM edge_presence
                WHERE NOT in_warehouse AND (processed_at IS NOT NULL OR received_at < :pending_cutoff)
                """
            ),
            {"day": day, "source": SOURCE, "pending_cutoff": pending_cutoff},
        ).rowcount
        findings.observe(conn, SOURCE, day, day + timedelta(days=1))
        pending = conn.execute(
            sa.text(
                "SELECT count(*) FROM edge_presence WHERE NOT in_warehouse AND processed_at IS NULL"
                " AND received_at >= :pending_cutoff"
            ),
            {"pending_cutoff": pending_cutoff},
        ).scalar_one()
    return DayReconciliation(day, len(rows), missing, pending, groups)


@dataclass
class RetentionResult:
    cutoff: str
    candidates: int
    deleted: int
    refused: int
    refused_sample: list[str]


def purge_processed(engine: Engine, edge: sqlite3.Connection, cutoff: datetime) -> RetentionResult:
    """Delete edge rows processed before `cutoff`, only those verified to be in the warehouse.

    A row marked processed but absent from the warehouse is refused (kept) and reported: it is
    evidence, and event_reconciliation reports it as missing_event.
    """
    cutoff_text = edge_store.utc_text(cutoff)
    cur = edge.cursor()
    cur.row_factory = None
    rows = cur.execute(
        "SELECT " + ", ".join(edge_store.STAGED_COLUMNS) + ", processed_at FROM events"
        " WHERE processed_at IS NOT NULL AND processed_at < ?",
        (cutoff_text,),
    ).fetchall()
    if not rows:
        return RetentionResult(cutoff_text, 0, 0, 0, [])
    with engine.begin() as conn:
        stage_edge_rows(conn, rows, with_processed_at=True)
        conn.connection.cursor().execute(_PRESENCE)
        verdicts = conn.execute(
            sa.text("SELECT edge_rowid, event_id, in_warehouse FROM edge_presence ORDER BY edge_rowid")
        ).all()
    deletable = [r.edge_rowid for r in verdicts if r.in_warehouse]
    refused = [r for r in verdicts if not r.in_warehouse]
    edge_store.delete_rows(edge, deletable)
    return RetentionResult(
        cutoff_text, len(rows), len(deletable), len(refused), [str(r.event_id) for r in refused[:20]]
    )
