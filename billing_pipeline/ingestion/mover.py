"""Move edge rows of a received_at window into the warehouse, exactly once.

Per batch (a keyset page of the edge), in move_batch:
  1. the months the page arrived in get their monthly partitions, if they have none yet;
  2. one warehouse transaction: COPY the raw rows into a temp staging table; insert the clean ones
     into `events` in one statement (sql/insert_clean.sql); when rows are left, check them in SQL
     (sql/check_stage.sql) and insert the valid ones and the rejected ones into `quarantined_events`
     (sql/insert_checked.sql);
  3. after that commit: rows of another month without its partition went to DEFAULT, and the month
     gets its partition (its own transaction); then, and only then, the batch's edge rows are marked
     processed (move_window, in a thread).
A crash between 2 and 3 leaves rows unmarked; the next run stages them again, finds them already in
the warehouse (same event_id, same fingerprint) and only marks them.
`workers` batches are in the warehouse at once, each on its own connection: one's COPY and casts run
while another inserts. Their rows never share an event_id (the edge's key; the pages of a run are
disjoint). Two locks: a run holds MOVER_RUN_LOCK from start to end, so runs follow each other and
never race on an event_id; each batch transaction holds MOVER_LOCK shared, which finalization takes
exclusively, so it waits for the batches in flight. The database refuses a second copy of an
event_id anyway (billing.event_ids, sql/0006_event_ids.sql).
"""

from __future__ import annotations

import sqlite3
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline import edge_store, sql_files

DEFAULT_BATCH_SIZE = 50_000
# Batches in the warehouse at once. Two keep both cores of a small machine busy (one batch's COPY and
# casts beside the other's inserts, the edge store's reads and marks in between); three measured slower.
DEFAULT_WORKERS = 2
# Advisory locks: every batch transaction holds MOVER_LOCK shared (finalization takes it exclusively:
# no event commits while it looks); a run holds MOVER_RUN_LOCK on a session of its own.
MOVER_LOCK = "billing.warehouse_events"
MOVER_RUN_LOCK = "billing.warehouse_events.run"


def sql_text(name: str) -> str:
    """A statement from this package's sql/ folder."""
    return sql_files.read("billing_pipeline.ingestion", name)


_CREATE_STAGE = sql_text("create_stage.sql")
_INSERT_CLEAN = sql_text("insert_clean.sql")
_UNSTAGE_MOVED = sql_text("unstage_moved.sql")
_CHECK = sql_text("check_stage.sql")
_INSERT = sql_text("insert_checked.sql")
_STAGE_COLUMNS = ("edge_rowid",) + edge_store.STAGED_COLUMNS[1:]
_RECEIVED_AT = edge_store.STAGED_COLUMNS.index("received_at")
_DAY = timedelta(days=1)


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


# The first and last day of the checked rows that get a monthly partition, as insert_clean.sql
# returns them.
_CHECKED_DAYS = """
SELECT min(billing.event_partition_day(occurred_ts, received_ts)),
    max(billing.event_partition_day(occurred_ts, received_ts))
FROM edge_checked
WHERE reason IS NULL
"""


@dataclass
class MoveResult:
    read: int = 0
    inserted: int = 0  # new rows in billing.events
    already_moved: int = 0  # replays of rows the warehouse already has
    quarantined: int = 0  # new rows in billing.quarantined_events
    # rows the clean insert left to check_stage.sql: the bad ones, or a whole batch when one of its
    # values has the right shape but does not parse or one of its event_ids is already in the warehouse
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


def move_batch(engine: Engine, rows: list[tuple], window: tuple[datetime, datetime]) -> MoveResult:
    """Stage a batch of the run's `window` and commit all of it to the warehouse in one transaction;
    the months of its rows get their partitions, before if they are the months the batch arrived in,
    after otherwise (the edge is the caller's to mark)."""
    result = MoveResult(read=len(rows), batches=1)
    prepared = _arrival_days(rows, *window)
    if prepared:  # most events occur around their arrival: their rows do not pass through DEFAULT
        _ensure_partitions(engine, prepared)
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock_shared(hashtext(:k))"), {"k": MOVER_LOCK})
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")  # the batch sorts/hashes in memory
        stage_edge_rows(conn, rows)
        result.inserted, *days = _insert_clean(conn)
        if result.inserted < len(rows):
            days += _move_checked(conn, result)
    days = [day for day in days if day is not None]
    if days and not (prepared and prepared[0] <= min(days) and max(days) <= prepared[1]):
        _ensure_partitions(engine, (min(days), max(days)))  # rows in DEFAULT move now
    return result


def _arrival_days(rows: list[tuple], start: datetime, end: datetime) -> tuple[date, date] | None:
    """The days a page arrived in, a day either side, within the window; None when its received_at
    does not parse (it is quarantined)."""
    try:  # a window's page is in received_at order
        first, last = (datetime.fromisoformat(rows[i][_RECEIVED_AT]) for i in (0, -1))
        days = (max(first, start) - _DAY).date(), (min(last, end) + _DAY).date()
    except (TypeError, ValueError, OverflowError):
        return None
    return days if days[0] <= days[1] else None


def _ensure_partitions(engine: Engine, days: tuple[date, date]) -> None:
    """Monthly partitions for the days' months (sql/0009_event_partitions_beside_inserts.sql), in a
    transaction of its own that inserts nothing."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT billing.ensure_event_partitions(:a, :b)"), {"a": days[0], "b": days[1]})


def _insert_clean(conn: sa.Connection) -> tuple[int, date | None, date | None]:
    """The staged batch's clean rows into events: how many, and the first and last day among them
    that get a monthly partition. (0, None, None) when a value of the right shape does not parse or
    an event_id is already in the warehouse: the statement fails, its savepoint is rolled back, the
    checked path takes the batch."""
    cursor = conn.connection.cursor()
    try:
        with conn.begin_nested():
            # hash joins for the catalog (a fresh temp table has no statistics)
            cursor.execute("SET LOCAL enable_nestloop = off")
            counts = cursor.execute(_INSERT_CLEAN).fetchone()
            cursor.execute("SET LOCAL enable_nestloop TO DEFAULT")
    except (psycopg.errors.DataError, psycopg.errors.UniqueViolation):
        return 0, None, None
    return counts


def _move_checked(conn: sa.Connection, result: MoveResult) -> list[date | None]:
    """The staged rows insert_clean.sql left: each checked, then inserted or quarantined with its
    reason; a row already in the warehouse as itself is only counted. Returns the first and last day
    of the inserted rows that get a monthly partition."""
    cursor = conn.connection.cursor()
    in_warehouse = cursor.execute(_UNSTAGE_MOVED).rowcount  # includes the rows just inserted
    result.already_moved = in_warehouse - result.inserted
    result.checked = result.read - in_warehouse
    cursor.execute(_CHECK)
    inserted, result.quarantined = cursor.execute(_INSERT).fetchone()
    result.inserted += inserted
    for reason, count in cursor.execute(
        "SELECT reason, count(*) FROM edge_checked WHERE reason IS NOT NULL GROUP BY 1"
    ):
        result.reasons[reason] += count
    return list(cursor.execute(_CHECKED_DAYS).fetchone())


@contextmanager
def holding_run_lock(engine: Engine) -> Iterator[None]:
    """MOVER_RUN_LOCK at session level for the block, on a connection of its own."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": MOVER_RUN_LOCK})
        try:
            yield
        finally:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": MOVER_RUN_LOCK})
            except sa.exc.DBAPIError:
                conn.invalidate()  # the session, and its lock, end with the connection


def move_window(
    engine: Engine,
    edge: sqlite3.Connection,
    start: datetime,
    end: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    on_batch: Callable[[MoveResult], None] | None = None,
) -> MoveResult:
    """Move every unprocessed edge row received in [start, end), plus any row no window can hold.

    The next page is read from the edge store (on a second connection, in a thread) while `workers`
    batches are in the warehouse; batches are settled (marked on the edge, counted) in page order.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    total = MoveResult()
    reader = edge_store.connect(edge_store.path_of(edge), check_same_thread=False)
    marker = edge_store.connect(edge_store.path_of(edge), check_same_thread=False)
    ahead = _read_ahead(_pages(reader, start, end, batch_size))
    try:
        with (
            holding_run_lock(engine),
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="warehouse-batch") as warehouse,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-marker") as marking,
        ):
            in_warehouse: deque[tuple[Future, list[tuple]]] = deque()
            # the last marking submitted: one at a time, its error raised here
            marked: Future | None = None

            def settle() -> None:
                nonlocal marked
                moving, rows = in_warehouse.popleft()
                batch = moving.result()
                # The warehouse has committed every row of the batch: only now may the edge say so.
                if marked:
                    marked.result()
                marked = marking.submit(edge_store.mark_processed, marker, [row[0] for row in rows])
                total.add(batch)
                if on_batch:
                    on_batch(batch)

            for rows in ahead:
                if len(in_warehouse) == workers:
                    settle()
                in_warehouse.append((warehouse.submit(move_batch, engine, rows, (start, end)), rows))
            while in_warehouse:
                settle()
            if marked:
                marked.result()
    finally:
        ahead.close()  # waits for a read in flight before its connection closes
        reader.close()
        marker.close()
    return total


def _pages(reader: sqlite3.Connection, start: datetime, end: datetime, batch_size: int) -> Iterator[list]:
    """The window's pages, then the rows no window can hold (every run sweeps them up)."""
    window = edge_store.hour_text(start), edge_store.hour_text(end)
    yield from edge_store.read_window(reader, *window, batch_size)
    if unwindowed := edge_store.read_unwindowed(reader, *window):
        yield unwindowed


def _read_ahead(pages: Iterator[list[tuple]]) -> Iterator[list[tuple]]:
    """The same pages, each read in a worker thread while the caller processes the previous one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-reader") as pool:
        upcoming = pool.submit(next, pages, None)
        while (page := upcoming.result()) is not None:
            upcoming = pool.submit(next, pages, None)
            yield page
