"""Alerts: a failed run and a reconciliation day over the thresholds are posted to the alerts webhook;
freshness checks cover events, usage and payments."""

from __future__ import annotations

import dagster as dg
import pytest
import sqlalchemy as sa

from billing_pipeline.defs.operations.freshness import FRESHNESS_CHECKS
from billing_pipeline.defs.operations.sensors import reconciliation_alerts, run_failure_alerts
from billing_pipeline.defs.resources import AlertResource, WarehouseResource

pytest_plugins = ["test_accounts_support"]  # fixture: json_receiver


@pytest.fixture
def alert_hook(json_receiver, monkeypatch):
    monkeypatch.setenv("BILLING_ALERT_WEBHOOK_URL", json_receiver.url)
    return json_receiver


@dg.asset(partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01"))
def exploding(context) -> None:
    raise RuntimeError("the warehouse said no")


def test_a_failed_run_is_posted(alert_hook):
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [exploding],
            instance=instance,
            partition_key="2026-03-02",
            raise_on_error=False,
            tags={"dagster/schedule_name": "daily_accounts_schedule"},
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE]
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alerts",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=run,
            resources={"alerts": AlertResource()},
        ).for_run_failure()
        run_failure_alerts(context)
    ((_, body),) = alert_hook.posts
    assert body["text"].startswith(f"*Dagster run failed: {run.job_name}*")
    assert f"run_id: {run.run_id}" in body["text"] and "partition: 2026-03-02" in body["text"]
    assert "launched_by: daily_accounts_schedule" in body["text"]


def _finding(conn, source, day, kind, internal, provider, currency="USD"):
    conn.execute(
        sa.text("""
        INSERT INTO recon.discrepancies (recon_date, source, kind, provider, reference, internal_amount_minor,
                                         provider_amount_minor, currency, detail)
        VALUES (:day, :source, :kind, 'stripe', 'ref', :internal, :provider, :currency, 'test')
    """),
        {
            "day": day,
            "source": source,
            "kind": kind,
            "internal": internal,
            "provider": provider,
            "currency": currency,
        },
    )


def test_reconciliation_days_over_the_thresholds_alert_once(engine, alert_hook, monkeypatch):
    monkeypatch.setenv("BILLING_RECON_ALERT_MAX_FINDINGS", "1")
    monkeypatch.setenv("BILLING_RECON_ALERT_MAX_AMOUNT_MINOR", "500")
    with engine.begin() as conn:
        _finding(
            conn, "payment_reconciliation", "2026-03-02", "amount_mismatch", 1000, 400
        )  # 600 apart: over
        _finding(conn, "payment_reconciliation", "2026-03-03", "amount_mismatch", 1000, 900)  # one, 100 apart
        _finding(conn, "call_reconciliation", "2026-03-02", "missing_call", None, 50)
        _finding(conn, "call_reconciliation", "2026-03-02", "missing_call", None, 50)  # two findings: over
        _finding(
            conn, "usage_reconciliation", "2026-03-04", "aggregate_mismatch", None, None
        )  # not materialized
    resources = {"warehouse": WarehouseResource(), "alerts": AlertResource()}
    with dg.instance_for_test() as instance:
        for key, day in [
            ("payment_reconciliation", "2026-03-02"),
            ("payment_reconciliation", "2026-03-03"),
            ("call_reconciliation", "2026-03-02"),
        ]:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=day))
        result = reconciliation_alerts(dg.build_sensor_context(instance=instance, resources=resources))
        titles = sorted(body["text"].split("\n")[0] for _, body in alert_hook.posts)
        assert titles == [
            "*Reconciliation over threshold: call_reconciliation 2026-03-02*",
            "*Reconciliation over threshold: payment_reconciliation 2026-03-02*",
        ]
        assert any("2 missing_call" in body["text"] for _, body in alert_hook.posts)
        assert any("600 USD" in body["text"] for _, body in alert_hook.posts)

        # the cursor moved: the same materializations never alert again, a new one does
        again = reconciliation_alerts(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=result.cursor)
        )
        assert len(alert_hook.posts) == 2 and again.skip_reason is not None
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="call_reconciliation", partition="2026-03-02")
        )
        reconciliation_alerts(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=again.cursor)
        )
        assert len(alert_hook.posts) == 3


def test_freshness_checks_cover_events_usage_and_payments():
    covered = {key.asset_key.to_user_string() for check in FRESHNESS_CHECKS for key in check.check_keys}
    assert covered == {
        "warehouse_events",
        "usage_daily",
        "usage_period",
        "stripe_sync",
        "razorpay_sync",
        "payment_reconciliation",
        "invoice_settlement",
    }
