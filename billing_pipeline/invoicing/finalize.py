"""Finalize a month: every draft of the checked build at once, numbered, then the month is closed.

`finalize_month(engine, period_start, actor)` in one transaction, holding the invoicing lock and
the mover's lock (so no event can be committed meanwhile with an ingested_at before this moment):

1. a closed month is left alone (finalizing twice is a no-op);
2. the month's current build must have passed every blocking check (billing.invoice_draft_checks),
   and every draft of the month must belong to it;
3. the month's raw events are recounted: if they changed since the build, the drafts do not show the
   change and it would arrive before the month closed, so not as late usage either: refused;
4. numbers are reserved gap-free for the year and assigned in organisation order; the drafts become
   finalized (from then on the triggers of sql/0031 make them immutable); the month is closed with
   closed_at = this transaction's start, which is the finalized_at of its invoices;
5. one audit row per invoice (draft -> finalized) and one for the month.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline import audit
from billing_pipeline.invoicing import INVOICING_LOCK, LOCK_SQL, WAREHOUSE_EVENTS_LOCK, numbering, periods
from billing_pipeline.invoicing.checks import BLOCKING_CHECKS, Build, current_build
from billing_pipeline.invoicing.drafts import closed_at, month_fingerprint


class FinalizationRefused(RuntimeError):
    """The month cannot be finalized as it is; the message says why and who is concerned."""


@dataclass
class FinalizeResult:
    period_start: date
    closed_at: datetime | None = None
    already_closed: bool = False
    build_id: object = None
    invoices: list[dict] = field(default_factory=list)  # invoice_id, organisation_id, number, currency, total

    def summary(self) -> dict:
        totals: dict[str, int] = {}
        for inv in self.invoices:
            totals[inv["currency"]] = totals.get(inv["currency"], 0) + inv["total_minor"]
        numbers = sorted(inv["number"] for inv in self.invoices)
        return {
            "period": periods.label(self.period_start),
            "already_closed": self.already_closed,
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "build_id": str(self.build_id) if self.build_id else None,
            "invoices_finalized": len(self.invoices),
            "first_number": numbers[0] if numbers else None,
            "last_number": numbers[-1] if numbers else None,
            "total_minor_by_currency": dict(sorted(totals.items())),
        }


def _refuse_unless_checked(conn: sa.Connection, build: Build, required: Sequence[str]) -> None:
    verdicts = dict(
        conn.execute(
            sa.text("SELECT check_name, passed FROM billing.invoice_draft_checks WHERE build_id = :b"),
            {"b": build.build_id},
        ).all()
    )
    failed = [name for name in required if verdicts.get(name) is False]
    missing = [name for name in required if name not in verdicts]
    if failed or missing:
        raise FinalizationRefused(
            f"{periods.label(build.period_start)}: draft build {build.build_id} has not passed every blocking"
            f" check (failed: {', '.join(failed) or 'none'}; not run: {', '.join(missing) or 'none'})"
        )


def _refuse_if_month_changed(conn: sa.Connection, build: Build) -> None:
    recorded = conn.execute(
        sa.text("SELECT event_count, quantity_sum FROM billing.invoice_draft_builds WHERE build_id = :b"),
        {"b": build.build_id},
    ).one()
    now = month_fingerprint(conn, build.period_start)
    if (recorded.event_count, recorded.quantity_sum) == now:
        return
    newer = conn.execute(
        sa.text(
            "SELECT organisation_id, count(*) AS n FROM billing.events"
            " WHERE occurred_at >= :period_start_ts AND occurred_at < :period_end_ts AND ingested_at >= :built_at"
            " GROUP BY organisation_id ORDER BY n DESC, organisation_id LIMIT 20"
        ),
        {**periods.bounds(build.period_start), "built_at": build.built_at},
    ).all()
    raise FinalizationRefused(
        f"{periods.label(build.period_start)}: the month's events changed since the drafts were built"
        f" ({recorded.event_count} events then, {now[0]} now); organisations with events ingested since:"
        f" {', '.join(f'{r.organisation_id} ({r.n})' for r in newer) or 'unknown'}. Draft the month again."
    )


_DRAFTS = sa.text(
    "SELECT invoice_id, organisation_id, currency, total_minor, build_id FROM billing.invoices"
    " WHERE period_start = :p AND status = 'draft' ORDER BY organisation_id, currency FOR UPDATE"
)

_FINALIZE = sa.text(
    """
    UPDATE billing.invoices i
    SET status = 'finalized', issuer = :issuer, number = n.number, finalized_at = now(), finalized_by = :actor
    FROM invoice_numbers n
    WHERE i.invoice_id = n.invoice_id
    """
)


def finalize_month(
    engine: Engine,
    period_start: date,
    actor: str,
    *,
    issuer: str = numbering.DEFAULT_ISSUER,
    required_checks: Sequence[str] = BLOCKING_CHECKS,
) -> FinalizeResult:
    """Finalize the month's checked drafts and close the month (see the module docstring)."""
    periods.check_period_start(period_start)
    with engine.begin() as conn:
        # now() is this transaction's start, taken before either lock: a mover transaction that
        # commits after we hold the lock started after it, so its rows are late for this month.
        conn.execute(sa.text(LOCK_SQL), {"key": INVOICING_LOCK})
        conn.execute(sa.text(LOCK_SQL), {"key": WAREHOUSE_EVENTS_LOCK})
        closed = closed_at(conn, period_start)
        if closed is not None:
            return FinalizeResult(period_start, closed, already_closed=True)
        build = current_build(conn, period_start)
        if build is None:
            raise FinalizationRefused(f"{periods.label(period_start)}: no drafts were built for the month")
        drafts = conn.execute(_DRAFTS, {"p": period_start}).all()
        strays = sorted({d.organisation_id for d in drafts if d.build_id != build.build_id})
        if strays:
            raise FinalizationRefused(
                f"{periods.label(period_start)}: drafts of {', '.join(strays[:20])} are not from build"
                f" {build.build_id}; draft the month again"
            )
        _refuse_unless_checked(conn, build, required_checks)
        _refuse_if_month_changed(conn, build)

        now = conn.execute(sa.text("SELECT now()")).scalar_one()
        result = FinalizeResult(period_start, now, build_id=build.build_id)
        if drafts:
            year = now.astimezone(timezone.utc).year  # the issue date's year
            first = numbering.reserve(conn, issuer, year, len(drafts))
            numbers = [numbering.format_number(issuer, year, first + i) for i in range(len(drafts))]
            conn.exec_driver_sql("CREATE TEMP TABLE invoice_numbers (invoice_id bigint, number text) ON COMMIT DROP")
            with conn.connection.cursor().copy("COPY invoice_numbers FROM STDIN") as copy:
                for draft, number in zip(drafts, numbers):
                    copy.write_row((draft.invoice_id, number))
            conn.execute(_FINALIZE, {"issuer": issuer, "actor": actor})
            result.invoices = [
                {
                    "invoice_id": d.invoice_id,
                    "organisation_id": d.organisation_id,
                    "number": number,
                    "currency": d.currency,
                    "total_minor": d.total_minor,
                }
                for d, number in zip(drafts, numbers)
            ]
        conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_periods (period_start, closed_at, closed_by, build_id, invoice_count)"
                " VALUES (:p, now(), :actor, :b, :n)"
            ),
            {"p": period_start, "actor": actor, "b": build.build_id, "n": len(drafts)},
        )
        label = periods.label(period_start)
        audit.record(
            conn,
            [
                audit.AuditEntry(
                    "invoice", str(inv["invoice_id"]), "finalized", actor, "draft", "finalized",
                    {"number": inv["number"], "organisation_id": inv["organisation_id"], "period": label,
                     "currency": inv["currency"], "total_minor": inv["total_minor"]},
                )  # fmt: skip
                for inv in result.invoices
            ]
            + [
                audit.AuditEntry(
                    "invoice_period", label, "closed", actor, "open", "closed",
                    {"build_id": str(build.build_id), "invoices": len(drafts)},
                )
            ],
        )
    return result
