"""The accounts assets in Dagster: a range of days in one run, then the next day, on a fixed clock."""

from __future__ import annotations

import dagster as dg
from test_accounts_support import (
    add_invoice,
    add_org,
    add_plan,
    outbox,
    record_charges,
    rows,
    stripe_charge,
    utc,
)

from billing_pipeline.defs.accounts import defs as accounts_defs
from billing_pipeline.defs.accounts.assets import AccountsClockResource
from billing_pipeline.defs.resources import AlertResource, WarehouseResource

ASSETS = list(accounts_defs.assets)

pytest_plugins = ["test_accounts_support"]  # fixture: fake_stripe


def _materialize(instance, clock: str, **partition):
    result = dg.materialize(
        ASSETS,
        instance=instance,
        resources={
            "warehouse": WarehouseResource(),
            "alerts": AlertResource(),
            "accounts_clock": AccountsClockResource(fixed_at=clock),
        },
        **partition,
    )
    assert result.success
    return {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }


def test_a_range_run_then_the_next_day(engine, fake_stripe, monkeypatch):
    monkeypatch.delenv("BILLING_NOTIFY_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("BILLING_NOTIFY_SMTP_URL", raising=False)
    state, _ = fake_stripe
    with engine.begin() as conn:
        plan = add_plan(conn)
        add_org(conn, "trial", plan, status="trialing", provider="none", trial_ends_at=utc(2026, 3, 5))
        add_org(conn, "acme", plan, customer="cus_acme")
        invoice = add_invoice(conn, "acme", 4200)
    record_charges(
        engine, stripe_charge(invoice, status="failed", at=utc(2026, 3, 3, 10), customer="cus_acme")
    )
    instance = dg.DagsterInstance.ephemeral()

    # March 1 to 5 in one run, decided as of the end of March 5
    meta = _materialize(
        instance,
        "2026-03-20T00:00:00+00:00",
        tags={
            "dagster/asset_partition_range_start": "2026-03-01",
            "dagster/asset_partition_range_end": "2026-03-05",
        },
    )
    assert meta["trial_transitions"]["as_of"].value == "2026-03-06T00:00:00+00:00"
    assert meta["trial_transitions"]["downgraded"].value == 1
    assert meta["grace_periods"]["opened"].value == 1 and meta["dunning_attempts"]["claimed"].value == 0
    statuses = {
        r["organisation_id"]: r["status"] for r in rows(engine, "SELECT * FROM billing.organisations")
    }
    assert statuses == {"trial": "downgraded", "acme": "grace"}
    assert (
        meta["notification_outbox"]["sent"].value == 2 and meta["notification_outbox"]["via"].value == "log"
    )
    assert set(instance.get_materialized_partitions(dg.AssetKey("grace_periods"))) == {
        f"2026-03-0{d}" for d in range(1, 6)
    }

    # March 6: day 3 of the retry schedule is due (slot 2); the retry succeeds and ends the grace period
    meta = _materialize(instance, "2026-03-20T00:00:00+00:00", partition_key="2026-03-06")
    assert meta["dunning_attempts"]["attempts_by_outcome"].value["succeeded"] == 1
    assert meta["grace_periods"]["paid"].value == 1
    (attempt,) = rows(engine, "SELECT * FROM billing.dunning_attempts")
    assert (attempt["attempt"], attempt["status"]) == (2, "succeeded")
    assert [p.idempotency_key for p in state.requests_to("/v1/payment_intents", "POST")] == [
        f"dunning:{invoice['invoice_id']}:2"
    ]
    assert rows(engine, "SELECT status FROM billing.organisations WHERE organisation_id = 'acme'") == [
        {"status": "active"}
    ]
    assert {n["kind"] for n in outbox(engine)} == {"trial_ended", "grace_started", "payment_received"}
    assert all(n["sent_via"] == "log" for n in outbox(engine))

    # the same day again: nothing more happens
    meta = _materialize(instance, "2026-03-20T00:00:00+00:00", partition_key="2026-03-06")
    assert meta["dunning_attempts"]["claimed"].value == 0 and meta["notification_outbox"]["sent"].value == 0
    assert len(state.requests_to("/v1/payment_intents", "POST")) == 1
