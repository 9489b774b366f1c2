"""Late events: which aggregated usage days are stale, and the bookkeeping that tells.

Plain functions over a SQLAlchemy connection (no Dagster): the sensor and the dbt asset call them,
tests call them directly.

How a day becomes stale. `billing.events.ingested_at` defaults to `now()`, the start time of the
transaction that inserts the row; the row becomes visible when that transaction commits, possibly
later. Before each aggregation we take a *visibility horizon*: the earliest start of any transaction
still open on the database (or now). Any event the aggregation could not see was inserted by a
transaction open at that moment or started after it, so its ingested_at is >= the horizon. Each
aggregated day is recorded with its horizon in `usage.aggregated_days`; a day with an event whose
ingested_at >= its horizon may be missing that event: it is stale and is aggregated again. (An event
that was in fact seen can make a day look stale once more; a redundant refresh is harmless, a
missed event is not.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import sqlalchemy as sa

from billing_pipeline.defs.usage.queries import sql
from billing_pipeline.utc import month_start, next_month

REASON_PARTITION = "partition"
REASON_LATE_EVENTS = "late_events"
REASON_FULL_REFRESH = "full_refresh"


# Session-level advisory lock held by every dbt invocation on the usage models ("usag").
USAGE_DBT_LOCK = 0x75736167


@contextmanager
def usage_dbt_lock(engine: sa.Engine) -> Iterator[None]:
    """One dbt invocation on the usage models at a time, across processes.

    Two runs at once would collide: dbt replaces a view through fixed `__dbt_tmp`/`__dbt_backup`
    names, and two windows of the same month both replace that month's usage_period rows (the
    second insert would hit the unique key). A run waits for the one in progress instead. The lock
    is held on an autocommit connection: no open transaction, so it does not hold back
    `visibility_horizon`.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": USAGE_DBT_LOCK})
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": USAGE_DBT_LOCK})


def visibility_horizon(conn: sa.Connection) -> datetime:
    """The earliest ingested_at of an event not yet visible to a snapshot taken now."""
    return conn.execute(sql("visibility_horizon")).scalar_one()


def record_aggregated_days(
    conn: sa.Connection, start: date, end: date, *, horizon: datetime, run_id: str | None, reason: str
) -> int:
    """Record that every day of [start, end) was aggregated from the events visible at `horizon`."""
    if end <= start:
        return 0
    conn.execute(
        sql("record_aggregated_days"),
        {"start_date": start, "end_date": end, "horizon": horizon, "run_id": run_id, "reason": reason},
    )
    return (end - start).days


@dataclass(frozen=True)
class LateDay:
    """An aggregated day with events ingested after (or while) it was aggregated."""

    usage_date: date
    late_events: int
    late_weighted_events: int  # of weighted_sum metrics: their level carries into later months
    first_ingested_at: datetime
    last_ingested_at: datetime
    aggregated_at: datetime
    horizon: datetime
    aggregated_by_run: str | None

    def describe(self) -> str:
        return (
            f"{self.usage_date}: {self.late_events} event(s) ingested"
            f" {self.first_ingested_at:%Y-%m-%d %H:%M:%S}..{self.last_ingested_at:%Y-%m-%d %H:%M:%S} UTC,"
            " after the day was aggregated at"
            f" {self.aggregated_at:%Y-%m-%d %H:%M:%S} UTC"
        )


def earliest_horizon(conn: sa.Connection) -> datetime | None:
    """Where a first scan for late events starts: the oldest horizon of any aggregated day."""
    return conn.execute(sa.text("SELECT min(horizon) FROM usage.aggregated_days")).scalar_one()


def find_late_days(conn: sa.Connection, scan_from: datetime) -> list[LateDay]:
    """Aggregated days with events ingested at or after their horizon, among events since scan_from."""
    rows = conn.execute(sql("late_days"), {"scan_from": scan_from}).mappings()
    return [LateDay(**row) for row in rows]


def closed_months(conn: sa.Connection, first: date, last: date) -> set[date]:
    """First days of the months in [first, last] that invoicing has closed: a row in
    billing.invoice_periods, or any finalized invoice of the month (for any organisation).

    Each table is looked up only if it exists (invoicing may not be deployed): without them no
    month is closed.
    """
    months: set[date] = set()
    params = {"first_month": month_start(first), "last_month": month_start(last)}
    for table, statement in (
        ("billing.invoice_periods", "closed_months_periods"),
        ("billing.invoices", "closed_months_invoices"),
    ):
        if conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar_one():
            months |= {row.period_start for row in conn.execute(sql(statement), params)}
    return months


def contiguous_ranges(days: list[date]) -> list[tuple[date, date]]:
    """Sorted days grouped into runs of consecutive days, as inclusive (first, last) pairs."""
    ranges: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if ranges and day == ranges[-1][1] + timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


@dataclass(frozen=True)
class RefreshPlan:
    """What the late-event sensor decided in one evaluation."""

    refresh: list[LateDay]  # days to aggregate again
    skipped_closed: list[LateDay]  # stale days in months already invoiced (billed as late lines)
    next_scan_from: datetime
    # weighted_sum carries its level into later months: a late event of such a metric changes every
    # later month's usage too. Each later open month that was aggregated gets its first aggregated
    # day re-aggregated (which recomputes the month): day -> month of the late events it carries.
    carry: dict[date, date] = field(default_factory=dict)
    # identifies the late events a carry comes from (their latest ingested_at): a later late event
    # carries again under a new run key
    carry_token: str = ""

    @property
    def days(self) -> list[date]:
        return sorted({d.usage_date for d in self.refresh} | set(self.carry))

    @property
    def ranges(self) -> list[tuple[date, date]]:
        return contiguous_ranges(self.days)


def plan_refresh(conn: sa.Connection, scan_from: datetime | None) -> RefreshPlan:
    """Find the stale days and where the next scan starts.

    The next scan starts at this evaluation's horizon, except that a day still waiting for its refresh
    keeps the scan start at or before its own late events, so it is found again (and requested under
    the same run key: no duplicate run) until a refresh has recorded a newer horizon.
    """
    horizon = visibility_horizon(conn)
    if scan_from is None:
        scan_from = earliest_horizon(conn)
        if scan_from is None:  # nothing aggregated yet: nothing can be late
            return RefreshPlan([], [], horizon)
    late = find_late_days(conn, scan_from)
    if not late:
        return RefreshPlan([], [], horizon)
    weighted = sorted({month_start(d.usage_date) for d in late if d.late_weighted_events})
    later = conn.execute(sql("carry_days"), {"from_date": next_month(weighted[0])}).all() if weighted else []
    last = max([late[-1].usage_date, *(row.month for row in later)])
    closed = closed_months(conn, late[0].usage_date, last)
    refresh = [d for d in late if month_start(d.usage_date) not in closed]
    skipped = [d for d in late if month_start(d.usage_date) in closed]
    refreshed_months = {month_start(d.usage_date) for d in refresh}
    carry = {
        row.first_day: max(m for m in weighted if m < row.month)
        for row in later
        if row.month not in closed and row.month not in refreshed_months
    }
    token = max((d.last_ingested_at for d in late if d.late_weighted_events), default=None)
    next_scan_from = min([horizon, *(d.first_ingested_at for d in refresh)])
    return RefreshPlan(refresh, skipped, next_scan_from, carry, token.isoformat() if token else "")


def run_key(days: list[LateDay], carry: list[date] = (), carry_token: str = "") -> str:
    """Same stale days with the same late events -> same key (the sensor never requests a run twice)."""
    return "usage-late:" + ",".join(
        [f"{d.usage_date.isoformat()}@{d.last_ingested_at.isoformat()}#{d.late_events}" for d in days]
        + [f"{day.isoformat()}@carry:{carry_token}" for day in carry]
    )


def cursor_dump(scan_from: datetime) -> str:
    return json.dumps({"scan_from": scan_from.isoformat()})


def cursor_load(cursor: str | None) -> datetime | None:
    if not cursor:
        return None
    return datetime.fromisoformat(json.loads(cursor)["scan_from"])
