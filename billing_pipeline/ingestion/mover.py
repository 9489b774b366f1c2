"""Move edge rows of a received_at window into the warehouse, exactly once.

Per batch (a keyset page of the edge):
  1. one warehouse transaction: COPY the raw rows into a temp staging table, validate them in SQL,
     insert the valid ones absent from `events` and the rejected ones into `quarantined_events`;
  2. after that commit, and only then, mark the batch's edge rows processed.
A crash between 1 and 2 leaves rows unmarked; the next run stages them again, finds them already in
the warehouse (same event_id, same fingerprint) and only marks them. An advisory lock serializes
movers, so two runs never race on the same event_id; the database refuses a second copy of an
event_id anyway (billing.event_ids, sql/0006_event_ids.sql).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from billing_pipeline import sql_files
from sqlalchemy.engine import Engine

from billing_pipeline import edge_store

DEFAULT_BATCH_SIZE = 50_000
# The advisory lock every writer of billing.events holds (finalization takes it too).
MOVER_LOCK = "billing.warehouse_events"


def sql_text(name: str) -> str:
    """A statement from this package's sql/ folder."""
    return sql_files.read("billing_pipeline.ingestion", name)


_CREATE_STAGE = sql_text("create_stage.sql")
_CHECK = sql_text("check_stage.sql")
_INSERT = sql_text("insert_checked.sql")
_STAGE_COLUMNS = ("edge_rowid",) + edge_store.STAGED_COLUMNS[1:]


def stage_edge_rows(conn: sa.Connection, rows: list[tuple], *, with_processed_at: bool = False) -> None:
    """COPY edge rows (STAGED_COLUMNS order, then processed_at if asked) into temp table edge_stage.

    The SQL files go to the driver as they are, without parameters ('%' is literal in them).
    """
    columns = _STAGE_COLUMNS + (("processed_at",) if with_processed_at else ())
    cursor = conn.connection.cursor()
    cursor.execute(_CREATE_STAGE)
    with cursor.copy(f"COPY edge_stage ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    # no ANALYZE: the planner sizes a fresh temp table from its pages, which is enough here
# Monthly partitions for the batch's months (older than 400 days before arrival: the DEFAULT one).
_ENSURE_PARTITIONS = """
SELECT billing.ensure_event_partitions(min(occurred_ts AT TIME ZONE 'UTC')::date,
                                       max(occurred_ts AT TIME ZONE 'UTC')::date)
FROM edge_checked
WHERE occurred_ts >= received_ts - interval '400 days'
HAVING count(*) > 0
"""


@dataclass
class MoveResult:
    read: int = 0
    inserted: int = 0  # new rows in billing.events
    already_moved: int = 0  # replays of rows the warehouse already has
    quarantined: int = 0  # new rows in billing.quarantined_events
    batches: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, other: MoveResult) -> None:
        self.read += other.read
        self.inserted += other.inserted
        self.already_moved += other.already_moved
        self.quarantined += other.quarantined
        self.batches += other.batches
        self.reasons.update(other.reasons)

    def as_metadata(self) -> dict:
        return {
            "edge_rows_read": self.read,
            "events_inserted": self.inserted,
            "already_in_warehouse": self.already_moved,
            "quarantined": self.quarantined,
            "batches": self.batches,
            "quarantine_reasons": dict(sorted(self.reasons.items())),
        }


def move_batch(engine: Engine, edge: sqlite3.Connection, rows: list[tuple]) -> MoveResult:
    """Stage, validate and commit one batch in one warehouse transaction, then mark it processed."""
    result = MoveResult(read=len(rows), batches=1)
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": MOVER_LOCK})
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")  # the checked batch sorts/hashes in memory
        stage_edge_rows(conn, rows)
        cursor = conn.connection.cursor()
        cursor.execute(_CHECK)
        cursor.execute(_ENSURE_PARTITIONS)
        result.inserted, result.quarantined = cursor.execute(_INSERT).fetchone()
        for reason, already, count in cursor.execute(
            "SELECT reason, already_moved, count(*) FROM edge_checked GROUP BY 1, 2"
        ):
            if reason:
                result.reasons[reason] += count
            elif already:
                result.already_moved += count
    # The warehouse has committed every row of the batch: only now may the edge say so.
    edge_store.mark_processed(edge, [row[0] for row in rows])
    return result


def move_window(
    engine: Engine,
    edge: sqlite3.Connection,
    start: datetime,
    end: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[MoveResult], None] | None = None,
) -> MoveResult:
    """Move every unprocessed edge row received in [start, end), plus any row no window can hold.

    The next page is read from the edge store (on a second connection, in a thread) while the
    warehouse works on the current one.
    """
    total = MoveResult()
    unwindowed = edge_store.read_unwindowed(edge)
    reader = edge_store.connect(edge_store.path_of(edge), check_same_thread=False)
    ahead = _read_ahead(
        edge_store.read_window(reader, edge_store.hour_text(start), edge_store.hour_text(end), batch_size)
    )
    try:
        for rows in itertools.chain([unwindowed] if unwindowed else [], ahead):
            batch = move_batch(engine, edge, rows)
            total.add(batch)
            if on_batch:
                on_batch(batch)
    finally:
        ahead.close()  # waits for a read in flight before its connection closes
        reader.close()
    return total


def _read_ahead(pages: Iterator[list[tuple]]) -> Iterator[list[tuple]]:
    """The same pages, each read in a worker thread while the caller processes the previous one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-reader") as pool:
        upcoming = pool.submit(next, pages, None)
        while (page := upcoming.result()) is not None:
            upcoming = pool.submit(next, pages, None)
            yield page
