"""vapi_calls and call_reconciliation materialized by Dagster against the FAKE Vapi server over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request

from billing_pipeline.calls.apply import apply_end_of_call
from billing_pipeline.calls.demo import seed_demo_calls
from billing_pipeline.catalog import apply_catalog, parse_catalog
from billing_pipeline.defs.calls.assets import VapiResource, call_reconciliation, vapi_calls
from billing_pipeline.defs.resources import AlertResource, WarehouseResource
from billing_pipeline.fakes.server import serve_in_thread
from billing_pipeline.fakes.vapi_fake import FakeVapiState, create_app, end_of_call_report
from billing_pipeline.money import to_minor
from billing_pipeline.payments.inbox import store_event
from billing_pipeline.providers.vapi_api import parse_cost
from billing_pipeline.wallet import ledger

ACTOR = "test:recon"
KEY = "test-vapi-key-0123456789abcdef0123"
DAY = datetime(2025, 3, 1, tzinfo=UTC)
PARTITION = "2025-03-01"
CATALOG = """
billable_metrics: [{code: calls, name: Calls, aggregation: count}]
plans:
  - {code: usd, name: USD, currency: USD, charges: [{metric: calls, model: standard, unit_amount: 1}]}
organisations:
  - {id: acme, name: Acme, plan: usd, currency: USD}
  - {id: bolt, name: Bolt, plan: usd, currency: USD}
"""


@pytest.fixture
def orgs(engine):
    apply_catalog(engine, parse_catalog(CATALOG), source="test", applied_by=ACTOR)
    with engine.begin() as conn:
        for org in ("acme", "bolt"):
            ledger.top_up(conn, org, 100_000, "USD", f"pay_{org}", actor=ACTOR)
    return engine


@pytest.fixture
def vapi(orgs, monkeypatch):
    state = FakeVapiState()
    with serve_in_thread(create_app(state, KEY)) as base_url:
        monkeypatch.setenv("VAPI_API_KEY", KEY)
        monkeypatch.setenv("VAPI_API_BASE", base_url)
        yield state


@pytest.fixture
def alerts(monkeypatch):
    """A Slack-compatible receiver on a loopback port; BILLING_ALERT_WEBHOOK_URL points at it."""
    received: list[dict] = []
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request):
        received.append(await request.json())
        return {"ok": True}

    with serve_in_thread(app) as base_url:
        monkeypatch.setenv("BILLING_ALERT_WEBHOOK_URL", f"{base_url}/hook")
        yield received


def materialize(page_limit: int = 100, assets=(vapi_calls, call_reconciliation)) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        list(assets),
        partition_key=PARTITION,
        resources={
            "warehouse": WarehouseResource(),
            "alerts": AlertResource(),
            "vapi": VapiResource(page_limit=page_limit),
        },
    )


def deliver(engine, calls) -> None:
    with engine.begin() as conn:
        for call in calls:
            apply_end_of_call(conn, end_of_call_report(call), actor=ACTOR)


def add_calls(state: FakeVapiState, n: int, org: str = "acme") -> list[dict]:
    return [
        state.add_call(
            DAY + timedelta(minutes=20 * i + 1), cost=0.1 + i / 1000, metadata={"organisation_id": org}
        )
        for i in range(n)
    ]


def q(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def cents(call: dict) -> int:
    return to_minor(parse_cost(call["cost"]), "USD")


def recon_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (mat,) = result.asset_materializations_for_node("call_reconciliation")
    return {k: v.value for k, v in mat.metadata.items()}


def test_missing_calls_are_recovered_and_charged_once_even_when_the_webhook_comes_later(orgs, vapi):
    calls = add_calls(vapi, 20)
    lost = calls[3], calls[11]
    deliver(orgs, [c for c in calls if c not in lost])

    first = recon_metadata(materialize())
    rerun = recon_metadata(materialize())
    expected = cents(lost[0]) + cents(lost[1])
    for meta in (first, rerun):
        assert (meta["missing_call"], meta["recovered_revenue_minor"], meta["provider_calls"]) == (
            2,
            expected,
            20,
        )
    assert first["charged_now_minor"] == expected and rerun["charged_now_minor"] == 0

    recovered = q(
        orgs,
        "SELECT call_id, charge_status, charged_minor FROM billing.calls WHERE reconciled"
        " ORDER BY created_at",
    )
    assert [(r.call_id, r.charge_status, r.charged_minor) for r in recovered] == [
        (c["id"], "charged", cents(c)) for c in lost
    ]
    findings = q(
        orgs,
        "SELECT kind, reference, internal_amount_minor, provider_amount_minor, recon_date, source"
        " FROM recon.discrepancies",
    )
    assert sorted((f.kind, f.reference) for f in findings) == sorted(("missing_call", c["id"]) for c in lost)
    assert {(f.recon_date.isoformat(), f.source) for f in findings} == {(PARTITION, "call_reconciliation")}
    assert all(f.internal_amount_minor == f.provider_amount_minor for f in findings)

    with orgs.begin() as conn:  # the lost webhook finally arrives, after reconciliation charged the call
        late = apply_end_of_call(conn, end_of_call_report(lost[0]), actor=ACTOR)
    assert (late.outcome, late.charge_status) == ("late", "charged")
    charges = q(orgs, "SELECT reference FROM billing.wallet_entries WHERE kind = 'call_charge'")
    assert sorted(r.reference for r in charges) == sorted(c["id"] for c in calls)
    with orgs.connect() as conn:
        assert ledger.status(conn, "acme").balance_minor == 100_000 - sum(cents(c) for c in calls)
    (row,) = q(
        orgs,
        "SELECT reconciled, webhook_received_at FROM billing.calls WHERE call_id = :id",
        id=lost[0]["id"],
    )
    assert row.reconciled and row.webhook_received_at is not None


def test_cost_changes_and_unknown_calls_are_findings(orgs, vapi):
    calls = add_calls(vapi, 3)
    deliver(orgs, calls)
    vapi.update_call(calls[0]["id"], cost=0.9)  # settles higher after we charged it
    ours_only = {**calls[1], "id": "call-not-at-vapi"}
    deliver(orgs, [ours_only])

    meta = recon_metadata(materialize())
    assert (meta["amount_mismatch"], meta["missing_at_provider"], meta["missing_call"]) == (1, 1, 0)
    findings = {f.kind: f for f in q(orgs, "SELECT * FROM recon.discrepancies")}
    mismatch = findings["amount_mismatch"]
    assert (mismatch.reference, mismatch.internal_amount_minor, mismatch.provider_amount_minor) == (
        calls[0]["id"],
        cents(calls[0]),
        90,
    )
    assert findings["missing_at_provider"].reference == "call-not-at-vapi"
    assert q(orgs, "SELECT charged_minor FROM billing.calls WHERE call_id = :id", id=calls[0]["id"]) == [
        (cents(calls[0]),)
    ]


@pytest.mark.parametrize(("by_webhook", "alerted"), [(47, True), (48, False)])  # of 50: 94% and 96%
def test_reliability_under_95_percent_warns_and_alerts(orgs, vapi, alerts, by_webhook, alerted):
    calls = add_calls(vapi, 25, "acme") + add_calls(vapi, 25, "bolt")
    deliver(orgs, calls[:by_webhook])

    result = materialize()
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "webhook_reliability"
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.passed is not alerted
    assert len(alerts) == (1 if alerted else 0)
    if alerted:
        assert "under 95%" in alerts[0]["text"] and "47/50" in alerts[0]["text"]
    (day,) = q(
        orgs, "SELECT provider_calls, webhook_calls, webhook_reliability FROM recon.call_reconciliation"
    )
    assert (day.provider_calls, day.webhook_calls, str(day.webhook_reliability)) == (
        50,
        by_webhook,
        f"0.{by_webhook * 2}0000",
    )


def test_sync_splits_full_windows_and_stores_every_call(orgs, vapi):
    added = {c["id"] for c in add_calls(vapi, 72)}  # 72 calls, pages of 10
    vapi.add_call(DAY - timedelta(milliseconds=1))  # the days around are not this partition's
    vapi.add_call(DAY + timedelta(days=1))

    result = materialize(page_limit=10, assets=[vapi_calls])
    (mat,) = result.asset_materializations_for_node("vapi_calls")
    assert mat.metadata["calls"].value == 72
    stored = {r.call_id for r in q(orgs, "SELECT call_id FROM billing.vapi_calls")}
    assert stored == added
    windows = [r["query"] for r in vapi.requests if r["path"] == "/call"]
    assert len(windows) > 72 // 10 and all(w["limit"] == "10" for w in windows)


def test_demo_seed_loses_a_few_webhooks_deterministically(orgs, vapi):
    first = seed_demo_calls(
        FakeVapiState(), DAY.date(), ["acme", "bolt"], calls_per_day=20, missing_webhook_share=0.04
    )
    second = seed_demo_calls(vapi, DAY.date(), ["acme", "bolt"], calls_per_day=20, missing_webhook_share=0.04)
    assert [c["id"] for c in first.calls] == [c["id"] for c in second.calls]
    assert len(second.missing_webhook_ids) == round(len(second.calls) * 0.04) > 0
    assert set(second.missing_webhook_ids).isdisjoint(second.webhook_call_ids)
    assert {c["createdAt"][:7] for c in second.calls} == {"2025-03"}


def test_code_location_has_the_calls_wiring_and_the_sensor_sees_due_events(orgs):
    from billing_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    for name in ("vapi_calls", "call_reconciliation"):
        node = graph.get(dg.AssetKey(name))
        assert node.backfill_policy == dg.BackfillPolicy.single_run() and node.group_name == "calls"
    assert (
        dg.AssetCheckKey(dg.AssetKey("call_reconciliation"), "webhook_reliability") in graph.asset_check_keys
    )
    assert {"vapi_calls", "call_reconciliation", "calls"} <= {
        k.to_user_string() for k in defs.resolve_job_def("daily_reconciliation_job").asset_layer.selected_asset_keys
    } | {k.to_user_string() for k in defs.resolve_job_def("webhook_inbox_job").asset_layer.selected_asset_keys}
    sensor = defs.resolve_sensor_def("webhook_inbox_sensor")

    instance = dg.DagsterInstance.ephemeral()

    def tick():
        with dg.build_sensor_context(instance=instance, resources={"warehouse": WarehouseResource()}) as context:
            return sensor(context)

    assert isinstance(tick(), dg.SkipReason)
    with orgs.begin() as conn:
        store_event(conn, "vapi", "end-of-call-report:x", "end-of-call-report", b'{"message": {}}')
    assert isinstance(tick(), dg.RunRequest)
