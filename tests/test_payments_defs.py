"""Payments in the code location: the inbox sensor and job, the daily job over a range in one run."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pytest
import sqlalchemy as sa
from test_payments_support import add_customers, add_invoices

from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.payments.demo import seed_demo_payments

pytest_plugins = ["test_payments_support"]  # fixtures: providers, receiver
pytestmark = pytest.mark.slow
DAYS = [date(2026, 11, 9), date(2026, 11, 10), date(2026, 11, 11)]


def _defs():
    from billing_pipeline.definitions import defs  # the inbox job spans domains (payments, calls)

    return defs


def _metadata(result, key, partitions=None):
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    assert sorted(e.partition for e in events) == (partitions or [None])  # a range run reports each partition
    return {k: v.value for k, v in events[0].materialization.metadata.items()}


def test_the_sensor_inbox_job_and_daily_job_reconcile_the_seeded_days(providers, engine):
    stripe_state, rzp_state = providers
    orgs = {f"org_s{n}": ("stripe", f"cus_{n}", "USD") for n in range(12)}
    orgs |= {f"org_r{n}": ("razorpay", f"cust_{n}", "INR") for n in range(10)}
    add_customers(engine, orgs)
    add_invoices(engine, [(org, 5000 + 11 * n) for n, org in enumerate(orgs)])
    defs = _defs()
    instance = dg.DagsterInstance.ephemeral()
    sensor = defs.resolve_sensor_def("webhook_inbox_sensor")

    def tick():
        return sensor(
            dg.build_sensor_context(instance=instance, resources={"warehouse": WarehouseResource()})
        )

    assert isinstance(tick(), dg.SkipReason)
    seeded = seed_demo_payments(engine, stripe_state, rzp_state, month=date(2026, 10, 1), days=DAYS)
    request = tick()
    assert isinstance(request, dg.RunRequest) and int(request.tags["billing/due_events"]) > 20

    inbox_run = defs.resolve_job_def("webhook_inbox_job").execute_in_process(instance=instance)
    assert inbox_run.success
    applied = _metadata(inbox_run, "payments")
    assert (
        applied["events_applied"] == int(request.tags["billing/due_events"])
        and applied["events_dead_lettered"] == 0
    )
    assert isinstance(tick(), dg.SkipReason)
    [check] = inbox_run.get_asset_check_evaluations()
    assert check.passed

    daily = defs.resolve_job_def("payments_daily_job").execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": str(DAYS[0]),
            "dagster/asset_partition_range_end": str(DAYS[-1]),
        },
    )

    assert daily.success
    keys = [str(d) for d in DAYS]
    recon = _metadata(daily, "payment_reconciliation", keys)
    assert (
        recon["findings"] == len(seeded.expected) == 2 * 6 + 1
    )  # each scenario per provider; Stripe refund: 2
    assert recon["records_by_outcome"]["matched"] > 10
    assert (
        "| missing_at_provider |" in recon["largest_findings"]
        and "| matched | stripe | USD |" in recon["totals"]
    )
    assert _metadata(daily, "stripe_sync", keys)["listed"]["charge"] > 10
    assert _metadata(daily, "invoice_settlement")["invoices_by_state"]["paid"] > 10
    with engine.connect() as conn:
        synced = conn.execute(
            sa.text("SELECT provider, sync_date FROM billing.provider_syncs ORDER BY 1, 2")
        ).all()
        kinds = conn.execute(sa.text("SELECT DISTINCT kind FROM recon.discrepancies")).scalars().all()
    assert [tuple(s) for s in synced] == [(p, d) for p in ("razorpay", "stripe") for d in DAYS]
    assert sorted(kinds) == [
        "amount_mismatch",
        "duplicate",
        "missing_at_provider",
        "missing_internal",
        "status_mismatch",
    ]
    assert len(instance.get_runs()) == 2  # the inbox run, and the three days in one run


def test_a_sync_without_credentials_fails_with_a_clear_message(db_url, monkeypatch):
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    result = (
        _defs()
        .resolve_job_def("payments_daily_job")
        .execute_in_process(
            partition_key="2026-11-09", instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
        )
    )
    assert not result.success
    [failure] = [
        e for e in result.all_events if e.event_type_value == "STEP_FAILURE" and e.step_key == "stripe_sync"
    ]
    assert "STRIPE_API_KEY is not set" in failure.event_specific_data.error.message
