"""The cross-table checks that gate finalization (SQL), and the record of every check's verdict.

Each check judges the month's current draft build and returns a `CheckOutcome` naming the
organisations at fault and why. The verdicts are stored per build in billing.invoice_draft_checks:
`finalize.finalize_month` refuses a build unless every blocking check (`BLOCKING_CHECKS`, the GX
suite's included) passed on that very build, so no run, whatever it selected, finalizes unchecked
drafts or drafts replaced after they were checked.

"The month" for the edge (migration_complete): edge rows whose occurred_at, parsed as the mover
parses it, falls in [period start, period end) UTC, and which the edge had received before the
drafts were built. Rows received after the build cannot be on these drafts whatever happens; if they
reach the warehouse before finalization, finalization's recount refuses the build (draft again), and
otherwise they are ingested after the month closed and billed as late usage on the next invoice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline import edge_store
from billing_pipeline.invoicing import load_sql, periods
from billing_pipeline.invoicing.drafts import closed_at

MIGRATION_COMPLETE = "migration_complete"
USAGE_MATCHES_EVENTS = "usage_matches_events"
LINES_MATCH_PLAN = "lines_match_plan"
ONE_DRAFT_PER_ORG_MONTH = "one_draft_per_org_month"
DRAFTS_PRICED = "drafts_priced"
DRAFT_RULES = "draft_rules"  # the Great Expectations suite (expectations.py)
TOTAL_JUMP = "total_jump"  # warn only

SQL_CHECKS = (MIGRATION_COMPLETE, USAGE_MATCHES_EVENTS, LINES_MATCH_PLAN, ONE_DRAFT_PER_ORG_MONTH, DRAFTS_PRICED)
BLOCKING_CHECKS = SQL_CHECKS + (DRAFT_RULES,)
DESCRIPTIONS = {
    MIGRATION_COMPLETE: "Every edge event of the month (received before the drafts were built) is in "
    "billing.events or billing.quarantined_events.",
    USAGE_MATCHES_EVENTS: "usage.usage_period equals the raw warehouse events per organisation, metric and "
    "month, and the drafts have the model's current units.",
    LINES_MATCH_PLAN: "Every billed metric has a charge in the organisation's plan version, every charge has "
    "its line, and the draft's plan version is the organisation's current one.",
    ONE_DRAFT_PER_ORG_MONTH: "One invoice per organisation and month, all from the checked build, and a draft "
    "for every organisation with usage of a charged metric or a minimum commitment.",
    DRAFTS_PRICED: "Every charge and every invoice total could be priced.",
    DRAFT_RULES: "Per-row and arithmetic rules of drafts and lines (Great Expectations suite): "
    "total = subtotal - discount + tax - credits, non-negative amounts, valid currency, rounding.",
    TOTAL_JUMP: "A draft total beyond JUMP_FACTOR times (or below 1/JUMP_FACTOR of) the organisation's recent "
    "average is flagged for review.",
}
JUMP_FACTOR = Decimal(3)
JUMP_HISTORY = 3  # finalized invoices averaged
MAX_FINDINGS = 200  # kept in metadata and in the check record; counts are always complete


@dataclass(frozen=True)
class Build:
    build_id: object  # uuid.UUID
    period_start: date
    built_at: datetime


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    summary: str
    findings: tuple[Mapping, ...] = ()  # each with organisation_id and reason
    stats: Mapping = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        return self.name in BLOCKING_CHECKS

    @property
    def organisations(self) -> list[str]:
        return sorted({str(f["organisation_id"]) for f in self.findings if f.get("organisation_id") is not None})

    def detail(self) -> dict:
        """What the check record and the Dagster metadata keep: counts, organisations, findings (as JSON
        values: amounts and dates as strings)."""
        detail = {
            "summary": self.summary,
            "organisations": self.organisations[:MAX_FINDINGS],
            "organisation_count": len(self.organisations),
            "finding_count": len(self.findings),
            "findings": [dict(f) for f in self.findings[:MAX_FINDINGS]],
            **self.stats,
        }
        return json.loads(json.dumps(detail, default=str))


def outcome(name: str, findings: Sequence[Mapping], ok: str, stats: Mapping | None = None) -> CheckOutcome:
    if not findings:
        return CheckOutcome(name, True, ok, (), stats or {})
    organisations = {f.get("organisation_id") for f in findings}
    summary = f"{len(findings)} finding(s) for {len(organisations)} organisation(s): {findings[0]['reason']}"
    return CheckOutcome(name, False, summary, tuple(findings), stats or {})


def _rows(conn: sa.Connection, sql_file: str, params: Mapping) -> list[dict]:
    return [dict(row._mapping) for row in conn.execute(sa.text(load_sql(sql_file)), params)]


def current_build(conn: sa.Connection, period_start: date) -> Build | None:
    row = conn.execute(
        sa.text(
            "SELECT build_id, built_at FROM billing.invoice_draft_builds WHERE period_start = :p"
            " ORDER BY build_number DESC LIMIT 1"
        ),
        {"p": period_start},
    ).one_or_none()
    return None if row is None else Build(row.build_id, period_start, row.built_at)


def _params(build: Build) -> dict:
    return {**periods.bounds(build.period_start), "build_id": build.build_id}


# --------------------------------------------------------------------------------------------------
# The checks: each takes a connection in the checking transaction and the build being checked
# --------------------------------------------------------------------------------------------------

_EDGE_MONTH = """
SELECT event_id, organisation_id, occurred_at, processed_at IS NOT NULL
FROM events
WHERE substr(occurred_at, 1, 10) >= ? AND substr(occurred_at, 1, 10) < ? AND received_at < ?
"""


def migration_complete(conn: sa.Connection, edge: sqlite3.Connection, build: Build) -> CheckOutcome:
    """Edge rows of the month (see the module docstring) missing from the warehouse and the quarantine."""
    # Offsets move an instant at most a day across a date: read a day more each side, the exact UTC
    # month is decided in PostgreSQL with the mover's parsing.
    start, end = build.period_start, periods.next_month(build.period_start)
    cursor = edge.cursor()
    cursor.row_factory = None
    rows = cursor.execute(
        _EDGE_MONTH,
        ((start - timedelta(days=1)).isoformat(), (end + timedelta(days=1)).isoformat(),
         edge_store.utc_text(build.built_at)),  # fmt: skip
    ).fetchall()
    conn.exec_driver_sql(
        "CREATE TEMP TABLE edge_month (event_id text, organisation_id text, occurred_at text, processed boolean)"
        " ON COMMIT DROP"
    )
    with conn.connection.cursor().copy("COPY edge_month FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    conn.exec_driver_sql("ANALYZE edge_month")
    findings = [
        {
            "organisation_id": r["organisation_id"],
            "not_moved": r["not_moved"],
            "lost": r["lost"],
            "reason": (
                f"{r['not_moved']} edge event(s) of the month not moved to the warehouse yet"
                if r["not_moved"]
                else f"{r['lost']} edge event(s) marked processed but in neither events nor quarantine"
            ),
        }
        for r in _rows(conn, "check_migration_complete.sql", _params(build))
    ]
    return outcome(
        MIGRATION_COMPLETE,
        findings,
        "every edge event of the month is in the warehouse or the quarantine",
        {"edge_rows_read": len(rows), "edge_received_before": edge_store.utc_text(build.built_at)},
    )


def usage_matches_events(conn: sa.Connection, build: Build) -> CheckOutcome:
    params = _params(build)
    findings = _rows(conn, "check_usage_matches_events.sql", params) + _rows(
        conn, "check_draft_usage_current.sql", params
    )
    return outcome(USAGE_MATCHES_EVENTS, findings, "usage equals the raw events; drafts are current")


def lines_match_plan(conn: sa.Connection, build: Build) -> CheckOutcome:
    findings = _rows(conn, "check_lines_match_plan.sql", _params(build))
    return outcome(LINES_MATCH_PLAN, findings, "every line has its charge and every charge its line")


def one_draft_per_org_month(conn: sa.Connection, build: Build) -> CheckOutcome:
    findings = _rows(conn, "check_one_draft_per_org_month.sql", _params(build))
    return outcome(ONE_DRAFT_PER_ORG_MONTH, findings, "one draft per organisation and month, none missing")


def drafts_priced(conn: sa.Connection, build: Build) -> CheckOutcome:
    findings = _rows(conn, "check_drafts_priced.sql", _params(build))
    return outcome(DRAFTS_PRICED, findings, "every charge and total was priced")


def total_jump(conn: sa.Connection, build: Build) -> CheckOutcome:
    findings = _rows(
        conn, "check_total_jump.sql", {**_params(build), "factor": JUMP_FACTOR, "history": JUMP_HISTORY}
    )
    return outcome(TOTAL_JUMP, findings, f"no total beyond {JUMP_FACTOR}x the recent average")


def closed_month_outcomes(names: Sequence[str], closed: datetime) -> list[CheckOutcome]:
    return [CheckOutcome(n, True, f"month closed at {closed.isoformat()}: no draft left to check") for n in names]


def missing_build_outcomes(names: Sequence[str], period_start: date) -> list[CheckOutcome]:
    reason = f"no draft build for {periods.label(period_start)}: materialize invoice_drafts first"
    return [CheckOutcome(n, False, reason, ({"organisation_id": None, "reason": reason},)) for n in names]


def checking_connection(engine: Engine):
    """One snapshot for all the checks of a run (REPEATABLE READ), timestamps read in UTC."""
    conn = engine.connect().execution_options(isolation_level="REPEATABLE READ")
    conn.begin()
    conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
    return conn


def run_sql_checks(
    engine: Engine, edge: sqlite3.Connection, period_start: date
) -> tuple[Build | None, list[CheckOutcome]]:
    """Every SQL check (and the jump warning) on the month's current build, in one snapshot."""
    names = SQL_CHECKS + (TOTAL_JUMP,)
    with checking_connection(engine) as conn:
        closed = closed_at(conn, period_start)
        if closed is not None:
            return None, closed_month_outcomes(names, closed)
        build = current_build(conn, period_start)
        if build is None:
            return None, missing_build_outcomes(names, period_start)
        outcomes = [
            migration_complete(conn, edge, build),
            usage_matches_events(conn, build),
            lines_match_plan(conn, build),
            one_draft_per_org_month(conn, build),
            drafts_priced(conn, build),
            total_jump(conn, build),
        ]
    return build, outcomes  # closing the connection rolls back: the staging table only


_RECORD = sa.text(
    """
    INSERT INTO billing.invoice_draft_checks (build_id, check_name, passed, blocking, detail, checked_by)
    VALUES (:build_id, :name, :passed, :blocking, CAST(:detail AS jsonb), :actor)
    ON CONFLICT (build_id, check_name) DO UPDATE SET passed = excluded.passed, blocking = excluded.blocking,
        detail = excluded.detail, checked_by = excluded.checked_by, checked_at = now()
    """
)


def record_outcomes(engine: Engine, build: Build | None, outcomes: Sequence[CheckOutcome], actor: str) -> None:
    """Store the verdicts against the build they judged (what finalization reads)."""
    if build is None or not outcomes:
        return
    with engine.begin() as conn:
        conn.execute(
            _RECORD,
            [
                {
                    "build_id": build.build_id,
                    "name": o.name,
                    "passed": o.passed,
                    "blocking": o.blocking,
                    "detail": json.dumps(o.detail()),
                    "actor": actor,
                }
                for o in outcomes
            ],
        )
