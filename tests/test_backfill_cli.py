"""`billing-pipeline backfill`: a month of hourly movement and daily usage launched from the command
line as one Dagster asset backfill on BILLING_HOME's instance, a failed run named with exit 1, and
the failed partitions run again with `--rerun-failed`, all audited."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from billing_pipeline.cli import app
from billing_pipeline.operations.backfill import BackfillError, parse_bound

pytestmark = pytest.mark.slow
runner = CliRunner()

REFUSE_EVENTS = """
CREATE FUNCTION billing.test_refuse_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected failure: billing.events refuses rows'; END $$;
CREATE TRIGGER refuse_events BEFORE INSERT ON billing.events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.test_refuse_events();
"""


def test_bounds_are_whole_days_or_instants():
    assert parse_bound("2026-10-07", end=True) == datetime(2026, 10, 8, tzinfo=UTC)
    assert parse_bound("2026-10-07", end=False) == datetime(2026, 10, 7, tzinfo=UTC)
    assert parse_bound("2026-10-07T06:00+02:00", end=True) == datetime(2026, 10, 7, 4, tzinfo=UTC)
    with pytest.raises(BackfillError, match="neither a date"):
        parse_bound("last tuesday", end=False)


def _invoke(*args):
    return runner.invoke(app, ["backfill", *args])


def test_a_month_of_movement_and_usage_fails_by_name_then_reruns_what_failed(engine, settings):
    assert runner.invoke(app, ["demo", "generate", "--month", "2026-10", "--events", "1500"]).exit_code == 0
    assert runner.invoke(app, ["catalog", "apply", str(settings.home_dir / "demo-catalog.yaml")]).exit_code == 0
    with engine.begin() as conn:
        conn.execute(sa.text(REFUSE_EVENTS))

    failed = _invoke("--asset", "warehouse_events", "--group", "usage", "--from", "2026-10-01",
                     "--to", "2026-10-31", "--actor", "ana")
    assert failed.exit_code == 1, failed.output
    assert re.search(r"warehouse_events .*2026-10-01-00:00 .*2026-10-31-23:00 .*744", failed.output)
    backfill_id = re.search(r"backfill (\w+) launched", failed.output).group(1)
    assert re.search(r"✗ run \S+ FAILURE", failed.output) and f"--rerun-failed {backfill_id}" in failed.output

    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER refuse_events ON billing.events"))
    rerun = _invoke("--rerun-failed", backfill_id, "--actor", "ana")
    assert rerun.exit_code == 0, rerun.output
    assert "completed" in rerun.output

    instance = dg.DagsterInstance.get()  # BILLING_HOME's, as the command left DAGSTER_HOME
    backfills = {b.backfill_id: b for b in instance.get_backfills()}
    assert backfill_id in backfills and len(backfills) == 2  # the UI lists both as backfills
    with engine.connect() as conn:
        moved = conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM billing.events) + (SELECT count(*) FROM billing.quarantined_events)"
        )).scalar_one()
        days = conn.execute(sa.text("SELECT count(DISTINCT usage_date) FROM usage.usage_daily")).scalar_one()
        audited = conn.execute(sa.text(
            "SELECT action, actor FROM billing.audit_log WHERE entity_type = 'backfill' ORDER BY audit_id"
        )).all()
    assert moved > 1500 and days == 31
    assert [tuple(a) for a in audited] == [("launched", "cli:ana"), ("relaunched", "cli:ana")]
