"""Move edge rows of a received_at window into the warehouse, exactly once.

Per batch (a keyset page of the edge):
  1. one warehouse transaction: COPY the raw rows into a temp staging table; insert the clean ones
     into `events` in one statement (sql/insert_clean.sql); when rows are left, check them in SQL
     (sql/check_stage.sql) and insert the valid ones absent from `events` and the rejected ones into
     `quarantined_events` (sql/insert_checked.sql);
  2. after that commit, and only then, mark the batch's edge rows processed (in a thread, while the
     warehouse works on the next batch).
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

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline import edge_store, sql_files

DEFAULT_BATCH_SIZE = 50_000
# The advisory lock every writer of billing.events holds (finalization takes it too).
MOVER_LOCK = "billing.warehouse_events"


def sql_text(name: str) -> str:
    """A statement from this package's sql/ folder."""
    return sql_files.read("billing_pipeline.ingestion", name)


_CREATE_STAGE = sql_text("create_stage.sql")
_INSERT_CLEAN = sql_text("insert_clean.sql")
_UNSTAGE_MOVED = sql_text("unstage_moved.sql")
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


# Monthly partitions for the checked rows' months (older than 400 days before arrival: the DEFAULT one).
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
    # rows the clean insert left to check_stage.sql: the bad ones, or a whole batch when one of its
    # values has the right shape but does not parse
    checked: int = 0
    batches: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, other: MoveResult) -> None:
        self.read += other.read
        self.inserted += other.inserted
        self.already_moved += other.already_moved
        self.quarantined += other.quarantined
        self.checked += other.checked
        self.batches += other.batches
        self.reasons.update(other.reasons)

    def as_metadata(self) -> dict:
        return {
            "edge_rows_read": self.read,
            "events_inserted": self.inserted,
            "already_in_warehouse": self.already_moved,
            "quarantined": self.quarantined,
            "rows_checked": self.checked,
            "batches": self.batches,
            "quarantine_reasons": dict(sorted(self.reasons.items())),
        }


def move_batch(engine: Engine, rows: list[tuple]) -> MoveResult:
    """Stage a batch and commit all of it to the warehouse in one transaction (the edge is the
    caller's to mark afterwards)."""
    result = MoveResult(read=len(rows), batches=1)
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": MOVER_LOCK})
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")  # the batch sorts/hashes in memory
        stage_edge_rows(conn, rows)
        result.inserted = _insert_clean(conn)
        if result.inserted < len(rows):
            _move_checked(conn, result)
    return result


def _insert_clean(conn: sa.Connection) -> int:
    """The staged batch's clean rows into events; how many. 0 when a value of the right shape does
    not parse: the statement fails, its savepoint is rolled back, the checked path takes the batch."""
    cursor = conn.connection.cursor()
    try:
        with conn.begin_nested():
            # hash joins for the catalog (a fresh temp table has no statistics); the registry probe
            # is a subplan and stays one index probe per row
            cursor.execute("SET LOCAL enable_nestloop = off")
            inserted, first_day, last_day = cursor.execute(_INSERT_CLEAN).fetchone()
            cursor.execute("SET LOCAL enable_nestloop TO DEFAULT")
    except psycopg.errors.DataError:
        return 0
    if first_day is not None:  # a month without its partition got its rows in DEFAULT: move them
        cursor.execute("SELECT billing.ensure_event_partitions(%s, %s)", (first_day, last_day))
    return inserted


def _move_checked(conn: sa.Connection, result: MoveResult) -> None:
    """The staged rows insert_clean.sql left: each checked, then inserted or quarantined with its
    reason; a row already in the warehouse as itself is only counted."""
    cursor = conn.connection.cursor()
    in_warehouse = cursor.execute(_UNSTAGE_MOVED).rowcount  # includes the rows just inserted
    result.already_moved = in_warehouse - result.inserted
    result.checked = result.read - in_warehouse
    cursor.execute(_CHECK)
    cursor.execute(_ENSURE_PARTITIONS)
    inserted, result.quarantined = cursor.execute(_INSERT).fetchone()
    result.inserted += inserted
    for reason, count in cursor.execute(
        "SELECT reason, count(*) FROM edge_checked WHERE reason IS NOT NULL GROUP BY 1"
    ):
        result.reasons[reason] += count


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
    marker = edge_store.connect(edge_store.path_of(edge), check_same_thread=False)
    ahead = _read_ahead(
        edge_store.read_window(reader, edge_store.hour_text(start), edge_store.hour_text(end), batch_size)
    )
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-marker") as marking:
            marked = None  # the previous batch's marking: one at a time, its error raised here
            for rows in itertools.chain([unwindowed] if unwindowed else [], ahead):
                batch = move_batch(engine, rows)
                # The warehouse has committed every row of the batch: only now may the edge say so.
                if marked:
                    marked.result()
                marked = marking.submit(edge_store.mark_processed, marker, [row[0] for row in rows])
                total.add(batch)
                if on_batch:
                    on_batch(batch)
            if marked:
                marked.result()
    finally:
        ahead.close()  # waits for a read in flight before its connection closes
        reader.close()
        marker.close()
    return total


def _read_ahead(pages: Iterator[list[tuple]]) -> Iterator[list[tuple]]:
    """The same pages, each read in a worker thread while the caller processes the previous one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-reader") as pool:
        upcoming = pool.submit(next, pages, None)
        while (page := upcoming.result()) is not None:
            upcoming = pool.submit(next, pages, None)
            yield page
