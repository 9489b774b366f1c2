"""Every schedule resolves, targets the intended partitions of the intended assets, waits for its upstream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from billing_pipeline.definitions import defs
from billing_pipeline.defs.operations.schedules import (
    SCHEDULES,
    build_schedules,
    invoicing_cron,
    last_complete_partition,
)
from billing_pipeline.defs.partitions import daily, hourly, monthly

# schedule -> (job, partitions, assets the job must hold)
EXPECTED = {
    "hourly_movement_schedule": ("hourly_movement_job", hourly, {"warehouse_events"}),
    "daily_usage_schedule": (
        "usage_job",
        daily,
        {"usage_daily", "usage_period", "usage_reconciliation"},
    ),
    "daily_reconciliation_schedule": (
        "daily_reconciliation_job",
        daily,
        {
            "event_reconciliation",
            "edge_retention",
            "stripe_sync",
            "razorpay_sync",
            "invoice_settlement",
            "payment_reconciliation",
            "vapi_calls",
            "call_reconciliation",
        },
    ),
    "daily_accounts_schedule": (
        "daily_accounts_job",
        daily,
        {"trial_transitions", "dunning_attempts", "grace_periods", "notification_outbox"},
    ),
    "monthly_invoicing_schedule": (
        "monthly_invoicing_job",
        monthly,
        {"invoice_drafts", "finalized_invoices"},
    ),
}


@pytest.fixture
def instance():
    with (
        dg.instance_for_test() as instance
    ):  # persistent (a temp dir): schedule contexts need an instance ref
        yield instance


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def tick(name: str, instance: dg.DagsterInstance, when: datetime) -> dg.RunRequest | str:
    schedule = defs.resolve_schedule_def(name)
    data = schedule.evaluate_tick(
        dg.build_schedule_context(
            instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
        )
    )
    if data.run_requests:
        (request,) = data.run_requests
        return request
    return data.skip_message


@dg.asset
def noop() -> None:
    pass


def materialized(instance: dg.DagsterInstance, key: str, partitions: list[str]) -> None:
    for partition in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


def _job_assets(job_name: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_job_def(job_name).asset_layer.selected_asset_keys}


def test_every_schedule_resolves_to_its_job_and_assets():
    assert sorted(s.name for s in SCHEDULES) == sorted(EXPECTED)
    for name, (job_name, partitions_def, assets) in EXPECTED.items():
        schedule = defs.resolve_schedule_def(name)
        assert (schedule.job_name, schedule.execution_timezone) == (job_name, "UTC")
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        job = defs.resolve_job_def(job_name)
        assert job.partitions_def == partitions_def
        assert assets <= _job_assets(job_name)
    assert "payments" not in _job_assets("daily_reconciliation_job")  # the inbox runs from its sensor


def test_every_partitioned_asset_is_scheduled_exactly_once_with_its_own_partitions():
    graph = defs.resolve_asset_graph()
    scheduled: dict[str, list[str]] = {}
    for job_name, partitions_def, _ in EXPECTED.values():
        for key in _job_assets(job_name):
            scheduled.setdefault(key, []).append(job_name)
            node = graph.get(dg.AssetKey.from_user_string(key))
            assert node.partitions_def in (None, partitions_def), (key, job_name)
    partitioned = {
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if graph.get(k).partitions_def is not None and graph.get(k).is_materializable
    }
    assert partitioned - set(scheduled) == set()
    assert {k: jobs for k, jobs in scheduled.items() if len(jobs) > 1} == {}


def test_hourly_movement_targets_the_hour_that_just_ended(instance):
    assert (
        tick("hourly_movement_schedule", instance, at(2026, 3, 1, 0, 5)).partition_key == "2026-02-28-23:00"
    )
    assert (
        tick("hourly_movement_schedule", instance, at(2026, 3, 1, 13, 5)).partition_key == "2026-03-01-12:00"
    )


def test_daily_usage_waits_for_the_days_24_movement_hours(instance):
    hours = [f"2026-02-28-{h:02d}:00" for h in range(24)]
    materialized(instance, "warehouse_events", hours[:-1])
    skipped = tick("daily_usage_schedule", instance, at(2026, 3, 1, 0, 15))
    assert skipped == "partition 2026-02-28 waits for warehouse_events 2026-02-28-23:00"
    materialized(instance, "warehouse_events", hours[-1:])
    assert tick("daily_usage_schedule", instance, at(2026, 3, 1, 0, 30)).partition_key == "2026-02-28"

    # once launched (here: a run carrying the tags the daemon gives it), later ticks skip the day
    run = dg.materialize(
        [noop],
        instance=instance,
        tags={"dagster/schedule_name": "daily_usage_schedule", "dagster/partition": "2026-02-28"},
    )
    assert tick("daily_usage_schedule", instance, at(2026, 3, 1, 5, 45)) == (
        f"partition 2026-02-28 already launched: run {run.run_id}"
    )
    assert tick("daily_usage_schedule", instance, at(2026, 3, 2, 0, 15)).startswith(
        "partition 2026-03-01 waits"
    )


def test_daily_reconciliation_and_accounts(instance):
    materialized(instance, "warehouse_events", [f"2026-02-28-{h:02d}:00" for h in range(24)])
    assert tick("daily_reconciliation_schedule", instance, at(2026, 3, 1, 2)).partition_key == "2026-02-28"

    assert "invoice_settlement (not materialized since 2026-03-01 00:00 UTC)" in tick(
        "daily_accounts_schedule", instance, at(2026, 3, 1, 3)
    )
    materialized(instance, "invoice_settlement", [None])  # now: after March 1 ended
    assert tick("daily_accounts_schedule", instance, at(2026, 3, 1, 3)).partition_key == "2026-02-28"
    far = datetime.now(UTC) + timedelta(days=3)  # settlement ran before that day ended: wait
    assert "invoice_settlement" in tick("daily_accounts_schedule", instance, far)


def test_monthly_invoicing_after_the_grace_window_once_usage_is_complete(instance):
    days = [f"2026-02-{d:02d}" for d in range(1, 29)]
    materialized(instance, "usage_daily", days)
    materialized(instance, "usage_period", days[:-1])
    assert tick("monthly_invoicing_schedule", instance, at(2026, 3, 1, 6)) == (
        "partition 2026-02-01 waits for usage_period 2026-02-28"
    )
    materialized(instance, "usage_period", days[-1:])
    assert tick("monthly_invoicing_schedule", instance, at(2026, 3, 1, 6, 15)).partition_key == "2026-02-01"


@pytest.mark.parametrize(
    ("hours", "cron"), [(6, "*/15 6-23 1 * *"), (0, "*/15 0-23 1 * *"), (30, "*/15 6-23 2 * *")]
)
def test_invoicing_grace_window_is_configurable(monkeypatch, hours, cron):
    assert invoicing_cron(hours) == cron
    monkeypatch.setenv("BILLING_INVOICING_GRACE_HOURS", str(hours))
    from billing_pipeline.accounts.settings import load_accounts_settings

    (schedule,) = [
        s
        for s in build_schedules(load_accounts_settings().invoicing_grace_hours)
        if s.name == "monthly_invoicing_schedule"
    ]
    assert schedule.cron_schedule == cron


def test_no_partition_before_the_first():
    assert last_complete_partition(daily, at(2025, 1, 1, 0, 10)) is None
    assert last_complete_partition(daily, at(2025, 1, 2)) == "2025-01-01"
    assert last_complete_partition(monthly, at(2025, 3, 1)) == "2025-02-01"
