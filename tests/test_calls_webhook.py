"""POST /webhooks/vapi over real HTTP, the inbox processing, and applying end-of-call reports once."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from billing_pipeline.api import webhooks_vapi
from billing_pipeline.api.app import create_app
from billing_pipeline.calls.apply import apply_end_of_call
from billing_pipeline.calls.demo import seed_demo_calls
from billing_pipeline.catalog import apply_catalog, parse_catalog
from billing_pipeline.fakes.server import serve_in_thread
from billing_pipeline.fakes.vapi_fake import FakeVapiState, deliver_end_of_call, end_of_call_report
from billing_pipeline.payments.inbox import MAX_ATTEMPTS, process_inbox, store_event
from billing_pipeline.settings import load_settings
from billing_pipeline.wallet import ledger

ACTOR = "test:calls"
SECRET = "vapi-webhook-secret-0123456789abcdef"
DAY = datetime(2025, 3, 1, tzinfo=UTC)
CATALOG = """
billable_metrics: [{code: calls, name: Calls, aggregation: count}]
plans:
  - {code: usd, name: USD, currency: USD, charges: [{metric: calls, model: standard, unit_amount: 1}]}
  - {code: eur, name: EUR, currency: EUR, charges: [{metric: calls, model: standard, unit_amount: 1}]}
organisations:
  - {id: acme, name: Acme, plan: usd, currency: USD}
  - {id: euro, name: Euro, plan: eur, currency: EUR}
"""


@pytest.fixture
def orgs(engine):
    apply_catalog(engine, parse_catalog(CATALOG), source="test", applied_by=ACTOR)
    with engine.begin() as conn:
        ledger.top_up(conn, "acme", 10_000, "USD", "pay_1", actor=ACTOR)
    return engine


@pytest.fixture
def api(orgs, monkeypatch):
    """The API app with the Vapi router, served on a loopback port; yields the webhook URL."""
    monkeypatch.setenv("VAPI_WEBHOOK_SECRET", SECRET)
    app = create_app(load_settings())
    if not any(getattr(r, "path", None) == "/webhooks/vapi" for r in app.routes):
        app.include_router(webhooks_vapi.router)
    with serve_in_thread(app) as base_url:
        yield f"{base_url}/webhooks/vapi"


def a_call(state: FakeVapiState, cost=0.4321, org="acme", minutes=0, **kw) -> dict:
    metadata = {"organisation_id": org} if org else {}
    return state.add_call(DAY + timedelta(minutes=minutes), cost=cost, metadata=metadata, **kw)


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def balance(engine, org="acme") -> int:
    with engine.connect() as conn:
        return ledger.status(conn, org).balance_minor


def test_webhook_is_verified_stored_once_and_answered_at_once(api, orgs):
    state = FakeVapiState()
    call = a_call(state)
    first = deliver_end_of_call(api, call, secret=SECRET)
    again = deliver_end_of_call(api, call, secret=SECRET)
    assert (first.status_code, first.json()["status"]) == (200, "accepted")
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    inbox = rows(
        orgs,
        "SELECT provider, event_id, event_type, payload, raw_body, processed_at FROM billing.webhook_inbox",
    )
    assert len(inbox) == 1
    assert inbox[0].event_id == f"end-of-call-report:{call['id']}"
    assert inbox[0].processed_at is None  # processing is asynchronous
    assert (
        json.loads(bytes(inbox[0].raw_body))
        == inbox[0].payload
        == end_of_call_report(call, inbox[0].payload["message"]["timestamp"])
    )
    assert rows(orgs, "SELECT * FROM billing.calls") == []


def test_every_vapi_auth_method_is_accepted_and_nothing_else(api, orgs):
    state = FakeVapiState()
    assert deliver_end_of_call(api, a_call(state), hmac_secret=SECRET).json()["status"] == "accepted"
    bearer = httpx.post(
        api, json=end_of_call_report(a_call(state)), headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert bearer.status_code == 200
    assert deliver_end_of_call(api, a_call(state), secret="wrong-secret").status_code == 401
    assert deliver_end_of_call(api, a_call(state)).status_code == 401
    stale = int((time.time() - 600) * 1000)
    assert deliver_end_of_call(api, a_call(state), hmac_secret=SECRET, timestamp_ms=stale).status_code == 401
    assert len(rows(orgs, "SELECT 1 FROM billing.webhook_inbox")) == 2


def test_other_messages_are_ignored_and_malformed_reports_refused(api, orgs):
    auth = {"X-Vapi-Secret": SECRET}
    ignored = httpx.post(api, json={"message": {"type": "status-update", "status": "ringing"}}, headers=auth)
    assert (ignored.status_code, ignored.json()) == (200, {"status": "ignored", "type": "status-update"})
    no_call = httpx.post(api, json={"message": {"type": "end-of-call-report"}}, headers=auth)
    assert no_call.status_code == 400 and "no 'call' object" in no_call.json()["detail"]
    bad_cost = end_of_call_report(
        {
            "id": "c1",
            "createdAt": "2025-03-01T00:00:00.000Z",
            "updatedAt": "2025-03-01T00:00:01.000Z",
            "cost": "lots",
        }
    )
    refused = httpx.post(api, json=bad_cost, headers=auth)
    assert refused.status_code == 400 and "is not a number" in refused.json()["detail"]
    assert httpx.post(api, content=b"{not json", headers=auth).status_code == 400
    assert rows(orgs, "SELECT 1 FROM billing.webhook_inbox") == []


def test_unconfigured_secret_refuses_every_webhook(orgs, monkeypatch):
    monkeypatch.delenv("VAPI_WEBHOOK_SECRET", raising=False)
    app = create_app(load_settings())
    app.include_router(webhooks_vapi.router)
    with serve_in_thread(app) as base_url:
        response = deliver_end_of_call(f"{base_url}/webhooks/vapi", a_call(FakeVapiState()), secret=SECRET)
    assert response.status_code == 503 and "VAPI_WEBHOOK_SECRET" in response.json()["detail"]


def test_inbox_processing_applies_and_charges_a_replayed_webhook_once(api, orgs):
    state = FakeVapiState()
    call = a_call(state, cost=0.4351)  # 43.51 cents -> 44, half-up
    for _ in range(3):
        deliver_end_of_call(api, call, secret=SECRET)
    assert process_inbox(orgs, ["vapi"], actor=ACTOR).processed_total == 1
    assert process_inbox(orgs, ["vapi"], actor=ACTOR).processed_total == 0

    with orgs.begin() as conn:  # the same report applied again (a dead-letter replay, a second worker)
        replay = apply_end_of_call(conn, end_of_call_report(call), actor=ACTOR)
    assert replay.outcome == "replay"
    (stored,) = rows(orgs, "SELECT * FROM billing.calls")
    assert (stored.charge_status, stored.charged_minor, stored.cost_minor, stored.reconciled) == (
        "charged",
        44,
        44,
        False,
    )
    assert str(stored.cost_usd) == "0.4351"
    assert stored.webhook_received_at is not None
    entries = rows(
        orgs, "SELECT reference, amount_minor FROM billing.wallet_entries WHERE kind = 'call_charge'"
    )
    assert entries == [(call["id"], -44)]
    assert balance(orgs) == 10_000 - 44
    processed = rows(orgs, "SELECT processed_at, attempts FROM billing.webhook_inbox")
    assert processed[0].processed_at is not None and processed[0].attempts == 1


def test_refused_unattributed_and_unsettled_calls_are_kept_with_their_reason(orgs):
    state = FakeVapiState()
    reports = {
        "refused": a_call(state, cost=150.0),  # 15,000 cents > 10,000 balance + 500 debt limit
        "currency": a_call(state, org="euro", cost=0.2),
        "nobody": a_call(state, org=None),
        "ghost": a_call(state, org="ghost"),
        "unsettled": a_call(state, cost=None),
    }
    with orgs.begin() as conn:
        applied = {k: apply_end_of_call(conn, end_of_call_report(c), actor=ACTOR) for k, c in reports.items()}
    assert {k: a.charge_status for k, a in applied.items()} == {
        "refused": "refused", "currency": "refused", "nobody": "unattributed", "ghost": "unattributed",
        "unsettled": "pending",
    }  # fmt: skip
    details = dict(rows(orgs, "SELECT call_id, charge_detail FROM billing.calls"))
    assert "debt_limit" in details[reports["refused"]["id"]]
    assert "currency_mismatch" in details[reports["currency"]["id"]]
    assert details[reports["nobody"]["id"]] == "the call has no metadata.organisation_id"
    assert details[reports["ghost"]["id"]] == "metadata.organisation_id ghost is not a known organisation"
    refusals = rows(orgs, "SELECT reference, reason FROM billing.wallet_refusals ORDER BY reason")
    assert refusals == [
        (reports["currency"]["id"], "currency_mismatch"),
        (reports["refused"]["id"], "debt_limit"),
    ]
    assert balance(orgs) == 10_000


def test_a_bad_event_backs_off_then_dies_without_holding_back_the_good_ones(orgs):
    bad = {"message": {"type": "end-of-call-report", "call": {"id": "c-bad", "createdAt": "yesterday"}}}
    good = end_of_call_report(a_call(FakeVapiState(), cost=0.25))
    with orgs.begin() as conn:
        store_event(conn, "vapi", "end-of-call-report:c-bad", "end-of-call-report", json.dumps(bad).encode())
        store_event(conn, "vapi", "end-of-call-report:good", "end-of-call-report", json.dumps(good).encode())
    first = process_inbox(orgs, ["vapi"], actor=ACTOR)
    assert (first.processed_total, first.retried) == (1, 1)
    assert rows(orgs, "SELECT charge_status, charged_minor FROM billing.calls") == [("charged", 25)]
    (row,) = rows(orgs, "SELECT attempts, last_error FROM billing.webhook_inbox WHERE processed_at IS NULL")
    assert row.attempts == 1 and "updatedAt" in row.last_error
    for _ in range(MAX_ATTEMPTS - 1):
        with orgs.begin() as conn:
            conn.execute(
                sa.text("UPDATE billing.webhook_inbox SET next_attempt_at = now() WHERE processed_at IS NULL")
            )
        process_inbox(orgs, ["vapi"], actor=ACTOR)
    (dead,) = rows(orgs, "SELECT event_id, attempts, last_error FROM billing.webhook_dead_letters")
    assert (dead.event_id, dead.attempts) == ("end-of-call-report:c-bad", MAX_ATTEMPTS)
    assert "updatedAt" in dead.last_error


def test_demo_seed_delivers_all_but_the_lost_webhooks(api, orgs):
    demo = seed_demo_calls(
        FakeVapiState(),
        DAY.date(),
        ["acme", "euro"],
        calls_per_day=3,
        missing_webhook_share=0.05,
        webhook_url=api,
        webhook_secret=SECRET,
    )
    assert len(demo.missing_webhook_ids) == round(len(demo.calls) * 0.05) > 0
    stored = {r.event_id for r in rows(orgs, "SELECT event_id FROM billing.webhook_inbox")}
    assert stored == {f"end-of-call-report:{i}" for i in demo.webhook_call_ids}
