"""The edge store: SQLite with the D1-compatible `events` table of DESIGN.md.

Everything that reads or writes the edge goes through here: the ingest API, the demo generator,
the mover (keyset pages by (received_at, event_id), never OFFSET), reconciliation and retention.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

COLUMNS = (
    "event_id",
    "organisation_id",
    "project_id",
    "metric",
    "quantity",
    "occurred_at",
    "received_at",
    "properties",
    "processed_at",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  event_id        TEXT PRIMARY KEY,
  organisation_id TEXT NOT NULL,
  project_id      TEXT NOT NULL,
  metric          TEXT NOT NULL,
  quantity        TEXT NOT NULL,
  occurred_at     TEXT NOT NULL,
  received_at     TEXT NOT NULL,
  properties      TEXT,
  processed_at    TEXT
);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
-- The mover's pages: unprocessed rows in (received_at, rowid) order; a row leaves it once processed.
CREATE INDEX IF NOT EXISTS events_pending ON events (received_at) WHERE processed_at IS NULL;
"""


def utc_text(moment: datetime) -> str:
    """The edge's timestamp format: ISO 8601, UTC, microseconds, 'Z' (sorts as text)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_text() -> str:
    return utc_text(datetime.now(timezone.utc))


def connect(path: Path | str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating if missing) the edge store; WAL so the API writes while the mover reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=check_same_thread)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


@contextmanager
def opened(path: Path | str) -> Iterator[sqlite3.Connection]:
    conn = connect(path)
    try:
        yield conn
    finally:
        conn.close()


def path_of(conn: sqlite3.Connection) -> Path:
    """The file behind an open edge store connection."""
    return Path(conn.execute("PRAGMA database_list").fetchone()[2])


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def insert_events(conn: sqlite3.Connection, rows: Iterable[Sequence]) -> int:
    """Insert rows (in COLUMNS order, processed_at omitted); an existing event_id is left as it was.

    Returns how many rows were new.
    """
    with transaction(conn):
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO events (event_id, organisation_id, project_id, metric, quantity,"
            " occurred_at, received_at, properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return conn.total_changes - before


STAGED_COLUMNS = ("rowid",) + COLUMNS[:-1]
_SELECT = "SELECT " + ", ".join(STAGED_COLUMNS) + " FROM events"


def hour_text(moment: datetime) -> str:
    """A window bound: the 'YYYY-MM-DDTHH' prefix of the UTC hour.

    Compared as text it places any received_at of that hour (whatever its fraction digits or its 'Z'
    or '+00:00' suffix) inside [hour, next hour).
    """
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H")


def read_window(
    conn: sqlite3.Connection, start: str, end: str, batch_size: int
) -> Iterator[list[tuple]]:
    """Pages of the unprocessed rows with start <= received_at < end, as tuples in STAGED_COLUMNS order.

    Keyset paging on (received_at, rowid): each page starts after the last key of the previous one,
    so a page costs the same wherever it is in the window, and rows marked processed meanwhile do not
    shift the pages (OFFSET would skip rows).
    """
    cur = conn.cursor()
    cur.row_factory = None
    last: tuple[str, int] | None = None
    while True:
        if last is None:
            page = cur.execute(
                _SELECT + " WHERE received_at >= ? AND received_at < ? AND processed_at IS NULL"
                " ORDER BY received_at, rowid LIMIT ?",
                (start, end, batch_size),
            ).fetchall()
        else:
            page = cur.execute(
                _SELECT + " WHERE received_at >= ? AND received_at < ? AND processed_at IS NULL"
                "   AND (received_at > ? OR (received_at = ? AND rowid > ?))"
                " ORDER BY received_at, rowid LIMIT ?",
                (last[0], end, last[0], last[0], last[1], batch_size),
            ).fetchall()
        if not page:
            return
        yield page
        if len(page) < batch_size:
            return
        last = (page[-1][7], page[-1][0])


def read_unwindowed(conn: sqlite3.Connection, start: str, end: str) -> list[tuple]:
    """Unprocessed rows whose received_at has no valid UTC hour: no window will ever select them.

    Every run sweeps them up so they are quarantined (bad_received_at), never left behind. Those inside
    the run's own window [start, end) as text (an hour with a 60th second, say) are left to its pages,
    so that no row is in two pages of one run.
    """
    cur = conn.cursor()
    cur.row_factory = None
    return cur.execute(
        _SELECT + " WHERE processed_at IS NULL AND (received_at IS NULL"
        " OR strftime('%Y-%m-%dT%H', substr(received_at, 1, 19)) IS NOT substr(received_at, 1, 13))"
        " AND (received_at IS NULL OR NOT (received_at >= ? AND received_at < ?))",
        (start, end),
    ).fetchall()


def mark_processed(conn: sqlite3.Connection, rowids: Sequence[int], at: str | None = None) -> None:
    """Set processed_at on rows the warehouse has committed (and only those: the caller's duty).

    One statement for the whole batch: the rowids travel as one JSON array.
    """
    with transaction(conn):
        conn.execute(
            "UPDATE events SET processed_at = ?"
            " WHERE rowid IN (SELECT value FROM json_each(?)) AND processed_at IS NULL",
            (at or now_text(), json.dumps(list(rowids))),
        )


def delete_rows(conn: sqlite3.Connection, rowids: Sequence[int]) -> int:
    """Delete processed rows by rowid (retention); a row not processed is never deleted."""
    with transaction(conn):
        return conn.execute(
            "DELETE FROM events WHERE rowid IN (SELECT value FROM json_each(?)) AND processed_at IS NOT NULL",
            (json.dumps(list(rowids)),),
        ).rowcount
