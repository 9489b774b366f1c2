"""`billing-pipeline health`: is the pipeline running, and does anything need a person?

Each check is `ok`, `warn` (worth a look) or `fail` (needs a person; the command exits 1):

| check | fail when |
| --- | --- |
| warehouse | it does not answer (the checks that need it are then skipped) |
| edge store | it cannot be read, or its oldest unmoved event is older than EDGE_BEHIND (movement behind) |
| migrations | a file is pending, changed since applied, or missing |
| schedule <name> | its latest run failed, or its last success is older than the schedule allows (overdue) |
| dead letters | a provider webhook is dead-lettered and not replayed |
| accounts | a notification is dead, or a dunning attempt has been pending (outcome unknown) too long |
| reconciliation | never (warn): days of the last week with findings over the alert thresholds |

Dagster's run history is read from the instance of DAGSTER_HOME (or the embedded BILLING_HOME/dagster).
No secret is printed: the warehouse is described without its password.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa

from billing_pipeline import migrations
from billing_pipeline.settings import Settings
from billing_pipeline.warehouse import describe, get_engine

EDGE_BEHIND = timedelta(hours=2)
DUNNING_STUCK = timedelta(hours=26)
RECON_LOOKBACK_DAYS = 7


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    summary: str
    details: Sequence[str] = field(default_factory=tuple)


@dataclass
class HealthReport:
    checked_at: datetime
    checks: list[Check] = field(default_factory=list)

    @property
    def needs_person(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def as_json(self) -> dict:
        return {
            "checked_at": self.checked_at.isoformat(),
            "needs_person": self.needs_person,
            "checks": [{**asdict(c), "details": list(c.details)} for c in self.checks],
        }


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def check_warehouse(settings: Settings) -> tuple[Check, sa.Engine | None]:
    try:
        engine = get_engine(settings)
        with engine.connect() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable; the class only (may name hosts)
        return Check("warehouse", "fail", f"unreachable ({type(exc).__name__})", (describe(settings),)), None
    return Check("warehouse", "ok", f"PostgreSQL {version}", (describe(settings),)), engine


def check_edge_store(settings: Settings, now: datetime) -> Check:
    path = settings.edge_path
    if not path.exists():
        return Check("edge store", "warn", f"no edge store yet at {path} (no event received)")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
            pending, oldest = conn.execute(
                "SELECT count(*), min(received_at) FROM events WHERE processed_at IS NULL"
            ).fetchone()
    except sqlite3.Error as exc:
        return Check("edge store", "fail", f"cannot read {path}: {exc}")
    if not pending:
        return Check("edge store", "ok", f"{path}: every event moved")
    lag = now - datetime.fromisoformat(oldest.replace("Z", "+00:00"))
    status = "fail" if lag > EDGE_BEHIND else "ok"
    return Check(
        "edge store",
        status,
        f"{pending} event(s) waiting to be moved, oldest received {_age(lag)} ago",
        ("movement is behind: check hourly_movement_schedule",) if status == "fail" else (),
    )


def check_migrations(engine: sa.Engine) -> Check:
    rows = migrations.status(engine)
    wrong = [r for r in rows if r.state != "applied"]
    if not wrong:
        return Check("migrations", "ok", f"{len(rows)} applied, latest {rows[-1].name if rows else 'none'}")
    return Check(
        "migrations",
        "fail",
        f"{len(wrong)} not applied as they are",
        [f"{r.name}: {r.state}" for r in wrong] + ["run `billing-pipeline db upgrade` (or fix the files)"],
    )


def check_schedules(instance, overdue_after: Mapping[str, timedelta], now: datetime) -> list[Check]:
    """Per schedule: its last success and whether it is overdue, stopped, or just failed."""
    import dagster as dg

    stopped = {
        s.instigator_name
        for s in instance.all_instigator_state()
        if s.instigator_type.value == "SCHEDULE" and s.status.value == "STOPPED"
    }
    checks = []
    for name, allowed in overdue_after.items():
        tag = {"dagster/schedule_name": name}
        success = instance.get_run_records(
            filters=dg.RunsFilter(tags=tag, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
        )
        latest = instance.get_run_records(filters=dg.RunsFilter(tags=tag), limit=1)
        label = f"schedule {name}"
        if success:
            ended = datetime.fromtimestamp(
                success[0].end_time or success[0].create_timestamp.timestamp(), timezone.utc
            )
            partition = success[0].dagster_run.tags.get("dagster/partition", "?")
            last = f"last success {ended:%Y-%m-%d %H:%M} UTC (partition {partition}, {_age(now - ended)} ago)"
        else:
            ended, last = None, "no successful run yet"
        if latest and latest[0].dagster_run.status == dg.DagsterRunStatus.FAILURE:
            run = latest[0].dagster_run
            checks.append(
                Check(
                    label,
                    "fail",
                    f"latest run failed: {run.run_id} (partition "
                    f"{run.tags.get('dagster/partition', '?')}); {last}",
                )
            )
        elif name in stopped:
            checks.append(Check(label, "warn", f"stopped; {last}"))
        elif ended is None:
            checks.append(Check(label, "warn", last))
        elif now - ended > allowed:
            checks.append(Check(label, "fail", f"overdue (allowed {_age(allowed)}); {last}"))
        else:
            checks.append(Check(label, "ok", last))
    return checks


def check_dead_letters(conn: sa.Connection) -> Check:
    waiting, oldest = conn.execute(
        sa.text("SELECT count(*), min(died_at) FROM billing.webhook_dead_letters WHERE replayed_at IS NULL")
    ).one()
    if not waiting:
        return Check("dead letters", "ok", "no webhook waiting for a replay")
    rows = conn.execute(
        sa.text("""
        SELECT provider, count(*) AS n FROM billing.webhook_dead_letters WHERE replayed_at IS NULL
        GROUP BY provider ORDER BY provider""")
    ).all()
    return Check(
        "dead letters",
        "fail",
        f"{waiting} webhook event(s) dead-lettered since {oldest:%Y-%m-%d %H:%M} UTC",
        [f"{r.provider}: {r.n}" for r in rows] + ["fix the cause, then `billing-pipeline webhooks replay`"],
    )


def check_accounts(conn: sa.Connection, now: datetime) -> Check:
    row = conn.execute(
        sa.text("""
        SELECT (SELECT count(*) FROM billing.notification_outbox WHERE dead_at IS NOT NULL) AS dead,
               (SELECT count(*) FROM billing.notification_outbox
                WHERE sent_at IS NULL AND dead_at IS NULL) AS queued,
               (SELECT count(*) FROM billing.dunning_attempts
                WHERE status = 'pending' AND claimed_at < :stuck) AS stuck,
               (SELECT count(*) FROM billing.organisations WHERE status = 'grace') AS in_grace,
               (SELECT count(*) FROM billing.organisations WHERE status = 'restricted') AS restricted
    """),
        {"stuck": now - DUNNING_STUCK},
    ).one()
    summary = (
        f"{row.in_grace} organisation(s) in grace, {row.restricted} restricted, "
        f"{row.queued} notification(s) queued"
    )
    problems = []
    if row.dead:
        problems.append(
            f"{row.dead} notification(s) dead: fix the sender, then "
            "`billing-pipeline accounts retry-notifications`"
        )
    if row.stuck:
        problems.append(
            f"{row.stuck} dunning attempt(s) pending for over {_age(DUNNING_STUCK)}: the provider's "
            "answer is unknown (see billing.dunning_attempts.error_message)"
        )
    return Check("accounts", "fail" if problems else "ok", summary, problems)


def reconciliation_findings(
    conn: sa.Connection, *, pairs: Sequence[tuple[str, date]] | None = None, since: date | None = None
) -> list[dict]:
    """recon.discrepancies per source and day (the pairs given, or every day since `since`): findings,
    findings by kind, and the absolute amount difference per currency."""
    sources = [p[0] for p in pairs] if pairs is not None else None
    days = [p[1] for p in pairs] if pairs is not None else None
    rows = conn.execute(
        sa.text("""
        SELECT d.source, d.recon_date, d.kind, COALESCE(d.currency, '') AS currency, count(*) AS findings,
               COALESCE(sum(abs(COALESCE(d.internal_amount_minor, 0)
                                - COALESCE(d.provider_amount_minor, 0))), 0) AS amount_minor
        FROM recon.discrepancies d
        WHERE (CAST(:since AS date) IS NULL OR d.recon_date >= CAST(:since AS date))
          AND (CAST(:sources AS text[]) IS NULL OR (d.source, d.recon_date) IN (
                SELECT * FROM unnest(CAST(:sources AS text[]), CAST(:days AS date[]))))
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
    """),
        {"since": since, "sources": sources, "days": days},
    ).mappings()
    summary: dict[tuple[str, date], dict] = {}
    for r in rows:
        entry = summary.setdefault(
            (r["source"], r["recon_date"]),
            {
                "source": r["source"],
                "recon_date": r["recon_date"],
                "findings": 0,
                "by_kind": {},
                "amount_minor": {},
            },
        )
        entry["findings"] += r["findings"]
        entry["by_kind"][r["kind"]] = entry["by_kind"].get(r["kind"], 0) + r["findings"]
        if r["currency"]:
            entry["amount_minor"][r["currency"]] = entry["amount_minor"].get(r["currency"], 0) + int(
                r["amount_minor"]
            )
    return list(summary.values())


def over_thresholds(findings: Sequence[dict], max_findings: int, max_amount_minor: int) -> list[dict]:
    return [
        f
        for f in findings
        if f["findings"] > max_findings or any(a > max_amount_minor for a in f["amount_minor"].values())
    ]


def describe_finding(f: dict) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(f["by_kind"].items()))
    amounts = ", ".join(f"{a} {c}" for c, a in sorted(f["amount_minor"].items()) if a)
    return f"{f['source']} {f['recon_date']}: {kinds}" + (
        f" (differences in minor units: {amounts})" if amounts else ""
    )


def check_reconciliation(conn: sa.Connection, today: date, max_findings: int, max_amount_minor: int) -> Check:
    flagged = over_thresholds(
        reconciliation_findings(conn, since=today - timedelta(days=RECON_LOOKBACK_DAYS)),
        max_findings,
        max_amount_minor,
    )
    if not flagged:
        return Check(
            "reconciliation", "ok", f"no day over the alert thresholds in the last {RECON_LOOKBACK_DAYS} days"
        )
    return Check(
        "reconciliation",
        "warn",
        f"{len(flagged)} source-day(s) over the alert thresholds in the last "
        f"{RECON_LOOKBACK_DAYS} days (finance: `billing-pipeline recon export --date D`)",
        [describe_finding(f) for f in flagged[:10]],
    )


def dagster_instance(settings: Settings):
    """The instance of DAGSTER_HOME, else the embedded one in BILLING_HOME/dagster; None if neither exists."""
    import dagster as dg

    from billing_pipeline.dagster_home import ensure_dagster_home

    if not os.environ.get("DAGSTER_HOME"):
        if not settings.dagster_home.exists():
            return None
        ensure_dagster_home(settings)
    return dg.DagsterInstance.get()


def _guarded(name: str, check, *args) -> list[Check]:
    """Run a check; an exception is a failed check naming it (a missing table, a broken instance)."""
    try:
        result = check(*args)
    except Exception as exc:  # noqa: BLE001 - health reports, it does not crash
        return [
            Check(name, "fail", f"could not check: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        ]
    return result if isinstance(result, list) else [result]


def run_health(
    settings: Settings,
    instance,
    *,
    overdue_after: Mapping[str, timedelta],
    now: datetime,
    recon_max_findings: int = 0,
    recon_max_amount_minor: int = 0,
) -> HealthReport:
    report = HealthReport(checked_at=now)
    warehouse, engine = check_warehouse(settings)
    report.checks.append(warehouse)
    report.checks += _guarded("edge store", check_edge_store, settings, now)
    if engine is not None:
        report.checks += _guarded("migrations", check_migrations, engine)
    if instance is None:
        report.checks.append(
            Check(
                "schedules",
                "fail",
                "no Dagster instance (DAGSTER_HOME unset and no "
                f"{settings.dagster_home}): no schedule has ever run here",
            )
        )
    else:
        report.checks += _guarded("schedules", check_schedules, instance, overdue_after, now)
    if engine is not None:
        with engine.connect() as conn:
            for name, check, args in (
                ("dead letters", check_dead_letters, ()),
                ("accounts", check_accounts, (now,)),
                (
                    "reconciliation",
                    check_reconciliation,
                    (now.date(), recon_max_findings, recon_max_amount_minor),
                ),
            ):
                report.checks += _guarded(name, check, conn, *args)
                conn.rollback()  # a failed check must not abort the next one's transaction
    return report
