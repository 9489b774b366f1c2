"""Findings finance works through (recon.findings) over the per-day observations (recon.discrepancies).

A finding is identified by (source, kind, organisation, reference): seen again on a later day it is the
same finding, with its first and last day seen and its age (days since first seen, today in UTC, or
until it closed). Every reconciliation calls `observe(conn, source, d0, d1)` after writing its days
[d0, d1): one set-based step that closes as `cleared` the open ones those days no longer show,
inserts/updates what it saw and reopens resolved or cleared findings seen on a later day. People move a finding with `set_status`
(open -> acknowledged -> resolved | wont_fix), each change with its note and actor in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import sqlalchemy as sa

from billing_pipeline import markdown
from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.money import from_minor, is_valid_currency
from billing_pipeline.sql_files import statement

OPEN_STATES = ("open", "acknowledged")
# allowed moves by people; 'cleared' and reopening are the data's (observe)
TRANSITIONS = {
    "open": {"acknowledged", "resolved", "wont_fix"},
    "acknowledged": {"resolved", "wont_fix"},
}
AGE_BANDS = ("0-1", "2-7", "8-30", ">30")
# the money a finding puts at stake, in minor units of its currency
AMOUNT_SQL = (
    "CASE WHEN kind = 'amount_mismatch'"
    " THEN abs(COALESCE(provider_amount_minor, 0) - COALESCE(internal_amount_minor, 0))"
    " ELSE COALESCE(provider_amount_minor, internal_amount_minor) END"
)
AGE_SQL = (
    "greatest(0, CASE WHEN status IN ('open', 'acknowledged') THEN CAST(:as_of AS date)"
    " ELSE COALESCE(cleared_on, (status_changed_at AT TIME ZONE 'UTC')::date) END - first_seen)"
)
BAND_SQL = (
    f"CASE WHEN {AGE_SQL} <= 1 THEN '0-1' WHEN {AGE_SQL} <= 7 THEN '2-7'"
    f" WHEN {AGE_SQL} <= 30 THEN '8-30' ELSE '>30' END"
)


class FindingError(ValueError):
    pass


@dataclass(frozen=True)
class Observed:
    observed: int
    reopened: int
    cleared: int


def observe(conn: sa.Connection, source: str, d0: date, d1: date, *, actor: str | None = None) -> Observed:
    """Fold the source's recon.discrepancies of the days [d0, d1) into recon.findings (caller's transaction)."""
    params = {"source": source, "d0": d0, "d1": d1, "actor": actor or f"asset:{source}"}
    cleared = conn.execute(statement("billing_pipeline.findings", "clear_findings"), params).rowcount
    row = conn.execute(statement("billing_pipeline.findings", "observe_findings"), params).one()
    return Observed(row.observed, row.reopened, cleared)


def set_status(conn: sa.Connection, finding_id: int, to_state: str, *, note: str | None, actor: str) -> dict:
    """Move one finding by hand (audited with its note); raises FindingError on a move not allowed."""
    if to_state in ("resolved", "wont_fix") and not (note and note.strip()):
        raise FindingError(f"a note is required to mark a finding {to_state}")
    current = conn.execute(
        sa.text("SELECT status FROM recon.findings WHERE finding_id = :id FOR UPDATE"), {"id": finding_id}
    ).scalar_one_or_none()
    if current is None:
        raise FindingError(f"no finding {finding_id}")
    if to_state not in TRANSITIONS.get(current, set()):
        raise FindingError(f"finding {finding_id} is {current}: it cannot become {to_state}")
    conn.execute(
        sa.text(
            "UPDATE recon.findings SET status = :to, status_note = :note, status_changed_at = now()"
            " WHERE finding_id = :id"
        ),
        {"to": to_state, "note": note, "id": finding_id},
    )
    record(
        conn,
        [AuditEntry("recon_finding", str(finding_id), to_state, actor, current, to_state, {"note": note})],
    )
    return {"finding_id": finding_id, "from_state": current, "to_state": to_state}


def list_findings(
    conn: sa.Connection,
    *,
    only_open: bool = False,
    kind: str | None = None,
    provider: str | None = None,
    older_than_days: int | None = None,
    source: str | None = None,
    as_of: date | None = None,
) -> list[dict]:
    """Findings, oldest first, with their age in days and the amount at stake (minor units)."""
    query = sa.text(f"""
        SELECT finding_id, source, kind, provider, organisation_id, reference, currency, status,
               first_seen, last_seen, cleared_on, {AGE_SQL} AS age_days, {AMOUNT_SQL} AS amount_minor,
               status_note, detail
        FROM recon.findings
        WHERE (NOT :only_open OR status IN ('open', 'acknowledged'))
          AND (CAST(:kind AS text) IS NULL OR kind = :kind)
          AND (CAST(:provider AS text) IS NULL OR provider = :provider)
          AND (CAST(:source AS text) IS NULL OR source = :source)
          AND (CAST(:older AS integer) IS NULL OR {AGE_SQL} > :older)
        ORDER BY first_seen, finding_id
    """)
    params = {
        "only_open": only_open,
        "kind": kind,
        "provider": provider,
        "source": source,
        "older": older_than_days,
        "as_of": as_of or utc_today(),
    }
    return [dict(r) for r in conn.execute(query, params).mappings()]


def major(minor: int | None, currency: str | None) -> str:
    if minor is None:
        return ""
    return str(from_minor(int(minor), currency)) if is_valid_currency(currency) else str(minor)


_OPEN_BY_BAND = sa.text(f"""
    SELECT kind, {BAND_SQL} AS band, currency, count(*) AS findings, sum({AMOUNT_SQL})::bigint AS amount_minor
    FROM recon.findings
    WHERE source = :source AND status IN ('open', 'acknowledged')
    GROUP BY 1, 2, 3 ORDER BY 1, array_position(CAST(:bands AS text[]), {BAND_SQL}), 3
""")
_NEW = sa.text(f"""
    SELECT kind, currency, count(*) AS findings, sum({AMOUNT_SQL})::bigint AS amount_minor
    FROM recon.findings
    WHERE source = :source AND first_seen >= :d0 AND first_seen < :d1
    GROUP BY 1, 2 ORDER BY 1, 2
""")


def utc_today() -> date:
    return datetime.now(UTC).date()


def metadata(conn: sa.Connection, source: str, d0: date, d1: date, *, as_of: date | None = None) -> dict:
    """What each reconciliation asset shows: open findings by kind and age band with amounts per
    currency (JSON and Markdown), beside the findings first seen in [d0, d1)."""
    params = {"source": source, "bands": list(AGE_BANDS), "as_of": as_of or utc_today()}
    open_rows = [dict(r) for r in conn.execute(_OPEN_BY_BAND, params).mappings()]
    new_rows = [dict(r) for r in conn.execute(_NEW, {"source": source, "d0": d0, "d1": d1}).mappings()]

    def as_json(rows: list[dict]) -> list[dict]:
        return [{**r, "amount": major(r["amount_minor"], r["currency"])} for r in rows]

    return {
        "open_findings": sum(r["findings"] for r in open_rows),
        "new_findings": sum(r["findings"] for r in new_rows),
        "open_findings_by_age": as_json(open_rows),
        "new_findings_by_kind": as_json(new_rows),
        "open_findings_table": markdown.table(
            ["kind", "age (days)", "currency", "findings", "amount"],
            (
                (r["kind"], r["band"], r["currency"], r["findings"], major(r["amount_minor"], r["currency"]))
                for r in open_rows
            ),
            empty="No open findings.",
        ),
        "new_findings_table": markdown.table(
            ["kind", "currency", "findings", "amount"],
            (
                (r["kind"], r["currency"], r["findings"], major(r["amount_minor"], r["currency"]))
                for r in new_rows
            ),
            empty="No new findings.",
        ),
    }
