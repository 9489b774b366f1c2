"""Usage helpers without a database: late-event planning, run requests, dbt environment, manifest."""

import logging
import os
import shutil
from datetime import UTC, date, datetime

import dagster as dg
import sqlalchemy as sa
from dagster_dbt import DbtProject

from billing_pipeline.defs.usage import late_events
from billing_pipeline.defs.usage.partitions import dbt_vars, window_dates
from billing_pipeline.defs.usage.project import DBT_PROJECT_DIR, dbt_env, dbt_environment, prepare_manifest
from billing_pipeline.defs.usage.sensors import run_requests_for
from billing_pipeline.settings import Settings


def _late(day: date, n: int = 1) -> late_events.LateDay:
    at = datetime(2025, 3, 1, 12, tzinfo=UTC)
    return late_events.LateDay(day, n, 0, at, at, at, at, "run-1")


def test_contiguous_ranges_group_consecutive_days():
    days = [
        date(2025, 1, 3),
        date(2025, 1, 1),
        date(2025, 1, 2),
        date(2025, 1, 9),
        date(2025, 2, 1),
        date(2025, 1, 31),
        date(2025, 1, 2),
    ]
    assert late_events.contiguous_ranges(days) == [
        (date(2025, 1, 1), date(2025, 1, 3)),
        (date(2025, 1, 9), date(2025, 1, 9)),
        (date(2025, 1, 31), date(2025, 2, 1)),
    ]
    assert late_events.contiguous_ranges([]) == []


def test_run_requests_cover_exactly_the_stale_days_with_their_reason():
    plan = late_events.RefreshPlan(
        refresh=[_late(date(2025, 1, 5), 2), _late(date(2025, 1, 6)), _late(date(2025, 1, 20), 4)],
        skipped_closed=[],
        next_scan_from=datetime(2025, 3, 1, tzinfo=UTC),
    )
    first, second = run_requests_for(plan)
    assert first.partition_key is None
    assert first.tags["dagster/asset_partition_range_start"] == "2025-01-05"
    assert first.tags["dagster/asset_partition_range_end"] == "2025-01-06"
    assert first.tags["usage/refresh_reason"] == "late_events"
    assert first.tags["usage/refresh_days"] == "2025-01-05, 2025-01-06"
    assert first.tags["usage/late_events"] == "3"
    assert second.partition_key == "2025-01-20" and "dagster/asset_partition_range_start" not in second.tags
    # the same late events give the same run key: the sensor never launches a refresh twice
    assert run_requests_for(plan)[0].run_key == first.run_key
    again = late_events.RefreshPlan(
        [_late(date(2025, 1, 5), 3), _late(date(2025, 1, 6))], [], plan.next_scan_from
    )
    assert run_requests_for(again)[0].run_key != first.run_key
    # a carry (weighted_sum level into a later month) from newer late events is a new run
    carry = late_events.RefreshPlan([], [], plan.next_scan_from, {date(2025, 2, 1): date(2025, 1, 1)}, "t1")
    [carried] = run_requests_for(carry)
    assert (
        carried.partition_key == "2025-02-01" and "recomputes 2025-02" in carried.tags["usage/refresh_detail"]
    )
    newer = late_events.RefreshPlan([], [], plan.next_scan_from, {date(2025, 2, 1): date(2025, 1, 1)}, "t2")
    assert run_requests_for(newer)[0].run_key != carried.run_key


def test_cursor_round_trip():
    at = datetime(2025, 1, 2, 3, 4, 5, 600, tzinfo=UTC)
    assert late_events.cursor_load(late_events.cursor_dump(at)) == at
    assert late_events.cursor_load(None) is None


def test_partition_window_becomes_half_open_dbt_vars():
    start, end = window_dates(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))
    assert dbt_vars(start, end) == {"min_date": "2025-01-01", "max_date": "2025-02-01"}


def test_dbt_environment_comes_from_the_settings_and_is_restored(monkeypatch):
    settings = Settings(BILLING_DATABASE_URL="postgresql://billing:s3cret@db.internal:6432/warehouse")
    assert dbt_env(settings) == {
        "BILLING_DBT_HOST": "db.internal",
        "BILLING_DBT_PORT": "6432",
        "BILLING_DBT_USER": "billing",
        "DBT_ENV_SECRET_BILLING_DBT_PASSWORD": "s3cret",
        "BILLING_DBT_DBNAME": "warehouse",
    }
    monkeypatch.setenv("BILLING_DBT_HOST", "before")
    monkeypatch.delenv("BILLING_DBT_DBNAME", raising=False)
    with dbt_environment(settings):
        assert os.environ["BILLING_DBT_HOST"] == "db.internal"
        assert os.environ["BILLING_DBT_DBNAME"] == "warehouse"
    assert os.environ["BILLING_DBT_HOST"] == "before"
    assert "BILLING_DBT_DBNAME" not in os.environ


def test_profile_reads_every_connection_setting_from_the_environment():
    profile = (DBT_PROJECT_DIR / "profiles.yml").read_text()
    for key in ("host", "port", "user", "password", "dbname", "schema"):
        line = next(text for text in profile.splitlines() if text.strip().startswith(f"{key}:"))
        assert "env_var(" in line, line
    assert "send_anonymous_usage_stats: false" in (DBT_PROJECT_DIR / "dbt_project.yml").read_text()


def test_a_dbt_project_that_does_not_parse_never_stops_the_code_location(tmp_path, caplog):
    copy = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, copy, ignore=shutil.ignore_patterns("target", "logs"))
    (copy / "models" / "marts" / "_usage_daily.yml").write_text("models: [this is not: valid yaml")
    project = DbtProject(project_dir=copy)
    with caplog.at_level(logging.ERROR):
        assert prepare_manifest(project) is None  # no manifest ever built: the dbt assets are left out
    assert "could not build the dbt manifest" in caplog.text


def test_without_a_manifest_the_usage_domain_still_loads(monkeypatch):
    import billing_pipeline.defs.usage as usage
    from billing_pipeline.defs.resources import RESOURCES

    monkeypatch.setattr(usage, "prepare_manifest", lambda: None)
    defs = dg.Definitions.merge(usage.build_defs(), dg.Definitions(resources=RESOURCES))
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert (
        "usage_reconciliation" in keys
        and "usage_daily" not in defs.resolve_asset_graph().materializable_asset_keys
    )


def test_usage_definitions():
    from billing_pipeline.defs.resources import RESOURCES
    from billing_pipeline.defs.usage import defs

    defs = dg.Definitions.merge(defs, dg.Definitions(resources=RESOURCES))
    graph = defs.resolve_asset_graph()
    usage = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).group_name == "usage"}
    assert usage == {
        "stg_billable_metrics",
        "stg_events",
        "usage_daily",
        "usage_period",
        "usage_reconciliation",
    }
    assert [p.to_user_string() for p in graph.get(dg.AssetKey("usage_daily")).parent_keys] == ["stg_events"]
    assert "warehouse_events" in {
        p.to_user_string() for p in graph.get(dg.AssetKey("stg_events")).parent_keys
    }
    for key in ("usage_daily", "usage_period", "usage_reconciliation"):
        assert graph.get(dg.AssetKey(key)).backfill_policy == dg.BackfillPolicy.single_run()
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert {
        ("usage_daily", "usage_daily_key_is_unique"),
        ("usage_period", "usage_period_aggregation_is_known"),
        ("usage_period", "weighted_sum_across_month_boundary"),
        ("usage_reconciliation", "usage_matches_raw_events"),
    } <= checks
    sensor = defs.resolve_sensor_def("usage_late_events_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_usage_dbt_invocations_are_serialized(engine):
    from billing_pipeline.defs.usage.late_events import USAGE_DBT_LOCK, usage_dbt_lock

    def try_lock() -> bool:
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": USAGE_DBT_LOCK}).scalar_one()
            if got:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": USAGE_DBT_LOCK})
            return got

    with usage_dbt_lock(engine):
        assert try_lock() is False  # a second run waits for the first
        with engine.connect() as conn:  # and the holder is no open transaction (horizon unaffected)
            open_xacts = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                )
            ).scalar_one()
        assert open_xacts == 0
    assert try_lock() is True
