"""`billing-pipeline health`: what it reports, and that it exits non-zero when something needs a person."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from billing_pipeline import edge_store
from billing_pipeline.accounts.cli import health
from billing_pipeline.defs.operations.schedules import OVERDUE_AFTER
from billing_pipeline.health import run_health


def _by_name(report) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.summary) for c in report.checks}


@dg.asset
def fine() -> None:
    pass


@dg.asset
def broken() -> None:
    raise RuntimeError("boom")


def test_a_quiet_installation_needs_nobody(settings):
    with dg.instance_for_test() as instance:
        report = run_health(settings, instance, overdue_after=OVERDUE_AFTER, now=datetime.now(UTC))
    checks = _by_name(report)
    assert checks["warehouse"][0] == "ok" and checks["warehouse"][1].startswith("PostgreSQL")
    assert checks["migrations"][0] == "ok" and "applied" in checks["migrations"][1]
    assert checks["edge store"][0] == "warn"  # nothing received yet
    assert checks["schedule hourly_movement_schedule"] == ("warn", "no successful run yet")
    assert checks["dead letters"][0] == checks["accounts"][0] == checks["reconciliation"][0] == "ok"
    assert not report.needs_person


def test_every_problem_is_reported_and_needs_a_person(settings, engine):
    now = datetime.now(UTC)
    with edge_store.opened(settings.edge_path) as edge:
        edge.execute(
            "INSERT INTO events (event_id, organisation_id, project_id, metric, quantity, occurred_at,"
            " received_at) VALUES ('e1', 'o', 'p', 'm', '1', ?, ?)",
            (edge_store.utc_text(now - timedelta(hours=3)),) * 2,
        )
    with engine.begin() as conn:
        inbox_id = conn.execute(
            sa.text(
                "INSERT INTO billing.webhook_inbox (provider, event_id, event_type, payload, raw_body,"
                " dead_at) VALUES ('stripe', 'evt_1', 'charge.failed', '{}', '\\x7b7d', now())"
                " RETURNING inbox_id"
            )
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO billing.webhook_dead_letters (inbox_id, provider, event_id, attempts,"
                " last_error) VALUES (:i, 'stripe', 'evt_1', 5, 'ValueError: bad')"
            ),
            {"i": inbox_id},
        )
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            [fine], instance=instance, tags={"dagster/schedule_name": "hourly_movement_schedule"}
        ).success
        dg.materialize(
            [broken],
            instance=instance,
            raise_on_error=False,
            tags={"dagster/schedule_name": "daily_usage_schedule", "dagster/partition": "2026-03-01"},
        )
        report = run_health(settings, instance, overdue_after=OVERDUE_AFTER, now=now)
        later = run_health(settings, instance, overdue_after=OVERDUE_AFTER, now=now + timedelta(hours=4))
    checks = _by_name(report)
    assert checks["edge store"][0] == "fail" and "1 event(s) waiting" in checks["edge store"][1]
    assert checks["dead letters"][0] == "fail" and "1 webhook" in checks["dead letters"][1]
    assert checks["schedule hourly_movement_schedule"][0] == "ok"
    assert checks["schedule daily_usage_schedule"][0] == "fail"
    assert "latest run failed" in checks["schedule daily_usage_schedule"][1]
    assert report.needs_person
    assert _by_name(later)["schedule hourly_movement_schedule"][0] == "fail"  # 4 h without a success: overdue
    assert "overdue" in _by_name(later)["schedule hourly_movement_schedule"][1]


def test_cli_exit_code_and_json(settings, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    app = typer.Typer()
    app.command()(health)
    app.command("noop")(lambda: None)  # a group, so `health` is a subcommand as when mounted
    runner = CliRunner()

    ok = runner.invoke(app, ["health"])
    assert ok.exit_code == 0, ok.output
    assert "needs a person: no" in ok.output and "schedule monthly_invoicing_schedule" in ok.output

    with engine.begin() as conn:
        conn.execute(
            sa.text("""
            INSERT INTO billing.billable_metrics (code, name, aggregation) VALUES ('m', 'm', 'count');
        """)
        )
        conn.execute(
            sa.text(
                "INSERT INTO billing.plans (code, version, name, currency, definition, content_hash)"
                " VALUES ('p', 1, 'p', 'USD', '{}', 'h')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO billing.organisations (organisation_id, name, plan_code, plan_id, currency,"
                " provider, catalog_hash)"
                " SELECT 'o', 'o', 'p', plan_id, 'USD', 'none', 'h' FROM billing.plans"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO billing.notification_outbox (dedupe_key, kind, organisation_id, subject, body,"
                " created_by, next_attempt_at, attempts, dead_at, last_error)"
                " VALUES ('k', 'trial_ended', 'o', 's', 'b', 'test', now(), 5, now(), 'ConnectError')"
            )
        )
    failed = runner.invoke(app, ["health", "--json"])
    assert failed.exit_code == 1, failed.output
    report = json.loads(failed.output)
    (accounts,) = [c for c in report["checks"] if c["name"] == "accounts"]
    assert report["needs_person"] and accounts["status"] == "fail"
    assert "retry-notifications" in accounts["details"][0]
