"""Provider syncs through the real SDKs over HTTP to the fakes: paging, overlap, idempotence, recovery."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from test_payments_support import payments

from billing_pipeline.payments import sync
from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import stripe_observation
from billing_pipeline.settings import load_settings

pytest_plugins = ["test_payments_support"]  # fixtures: providers, receiver
pytestmark = pytest.mark.slow
DAY = datetime(2026, 11, 10, tzinfo=UTC)
NEXT = datetime(2026, 11, 11, tzinfo=UTC)
T = int(DAY.timestamp())


def _count(engine, sql):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def test_stripe_sync_pages_through_the_sdk_over_the_overlapping_window_and_is_idempotent(providers, engine):
    state, _ = providers
    for n in range(230):  # three pages of charges
        state.add_charge(1000 + n, "usd", customer="cus_1", created=T + 60 * n, fee=59)
    refunded = state.add_charge(5000, "eur", created=T - 2 * 86400)  # inside the 3-day overlap
    state.add_refund(refunded["id"], 1500, created=T + 10)
    state.add_charge(1, "usd", created=T - 4 * 86400)  # before the overlap
    state.add_charge(1, "usd", created=int(NEXT.timestamp()))  # the next day
    state.add_charge(100, "usd", created=T + 5, id="ch_odd")
    state.update("charges", "ch_odd", currency="zzz")
    client = sync.stripe_client(load_settings())

    first = sync.sync_stripe(engine, client, DAY, NEXT, actor="run:sync")

    assert first.counts == {"charge": 232, "refund": 1, "balance_transaction": 230}
    assert (first.applied.recorded, first.applied.updated) == (232, 0)
    assert [r["object_id"] for r in first.rejected] == [
        "ch_odd"
    ] and "unsupported currency" in first.rejected[0]["reason"]
    calls = state.requests_to("/v1/charges", "GET")
    assert len(calls) == 3 and all(c.auth_scheme == "Bearer" for c in calls)
    assert {(c.params["created[gte]"], c.params["created[lt]"]) for c in calls} == {
        (str(T - 3 * 86400), str(int(NEXT.timestamp())))
    }
    assert [c.params.get("starting_after") is None for c in calls] == [True, False, False]
    rows = payments(engine)
    assert (
        rows[refunded["id"]]["status"] == "partially_refunded"
        and rows[refunded["id"]]["amount_refunded_minor"] == 1500
    )
    assert {r["first_seen_via"] for r in rows.values()} == {"sync"} and all(
        r["webhook_seen_at"] is None for r in rows.values()
    )
    assert (
        _count(engine, "SELECT count(*) FROM billing.provider_record_rejects WHERE object_id = 'ch_odd'") == 1
    )
    assert _count(engine, "SELECT count(*) FROM billing.stripe_balance_transactions") == 230

    audit_rows = _count(engine, "SELECT count(*) FROM billing.audit_log")
    again = sync.sync_stripe(engine, client, DAY, NEXT, actor="run:sync")
    assert (again.applied.recorded, again.applied.updated) == (0, 0)
    assert _count(engine, "SELECT count(*) FROM billing.audit_log") == audit_rows
    assert _count(engine, "SELECT count(*) FROM billing.provider_records") == 231 + 1  # ch_odd rejected
    assert (
        _count(
            engine,
            "SELECT count(*) FROM billing.provider_syncs WHERE provider = 'stripe'"
            " AND sync_date = '2026-11-10'",
        )
        == 1
    )


def test_a_sync_moves_webhook_state_forward_never_back_and_keeps_the_first_amount(providers, engine):
    state, _ = providers
    late = state.add_charge(700, "usd", created=T + 1, status="pending")
    ahead = state.add_charge(800, "usd", created=T + 2)
    with engine.begin() as conn:
        apply_observations(
            conn,
            [
                Seen(stripe_observation({**late, "object": "charge"}), "evt_1", DAY),
                Seen(
                    stripe_observation(
                        {**ahead, "object": "charge", "amount_refunded": 800, "refunded": True}
                    ),
                    "evt_2",
                    DAY,
                ),
            ],
            via="webhook",
            actor="api:test",
        )
    state.update("charges", late["id"], status="succeeded", captured=True, paid=True, amount=650)

    sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:sync")

    rows = payments(engine)
    assert (rows[late["id"]]["status"], rows[late["id"]]["amount_minor"]) == (
        "captured",
        700,
    )  # forward; amount kept
    assert rows[ahead["id"]]["status"] == "refunded"  # the provider is behind: reconciliation reports it
    assert {r["first_seen_via"] for r in rows.values()} == {"webhook"}
    with engine.connect() as conn:
        provider_side = dict(
            conn.execute(sa.text("SELECT object_id, amount_minor FROM billing.provider_records")).all()
        )
    assert provider_side == {late["id"]: 650, ahead["id"]: 800}


def test_razorpay_sync_pages_by_offset_over_a_closed_window_and_recovers_what_no_webhook_said(
    providers, engine
):
    _, rzp = providers
    order = rzp.add_order(9900, notes={"invoice_id": "42"}, created_at=T + 1)
    for n in range(120):
        rzp.add_payment(100 + n, created_at=T + 100 + n, customer_id="cust_1")
    paid = rzp.add_payment(9900, order_id=order["id"], created_at=T + 5)
    rzp.add_refund(paid["id"], 900, created_at=T + 50)
    rzp.add_settlement(100000, fees=2000, tax=360, created_at=T + 3600)

    result = sync.sync_razorpay(engine, sync.razorpay_client(load_settings()), DAY, NEXT, actor="run:sync")

    assert result.counts == {"order": 1, "payment": 121, "refund": 1, "settlement": 1}
    pages = rzp.requests_to("/v1/payments")
    assert [p.params["skip"] for p in pages] == ["0", "100"]
    assert {(p.params["from"], p.params["to"], p.params["count"]) for p in pages} == {
        (str(T - 3 * 86400), str(int(NEXT.timestamp()) - 1), "100")
    }  # Razorpay's `to` is inclusive
    rows = payments(engine)
    assert (rows[paid["id"]]["status"], rows[paid["id"]]["amount_refunded_minor"]) == (
        "partially_refunded",
        900,
    )
    assert rows[paid["id"]]["parent_object_id"] == order["id"] and rows[order["id"]]["invoice_ref"] == "42"
    assert rows[paid["id"]]["fee_minor"] == paid["fee"]
    assert _count(engine, "SELECT count(*) FROM billing.razorpay_settlements WHERE fees_minor = 2000") == 1
