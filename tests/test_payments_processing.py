"""Inbox processing: at most once, forward-only states, backoff, dead letters and their replay."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
import sqlalchemy as sa
from test_payments_support import RZP_WEBHOOK_SECRET, STRIPE_SECRET, inbox, payments
from typer.testing import CliRunner

from billing_pipeline.fakes import razorpay_fake, stripe_fake
from billing_pipeline.payments import handlers
from billing_pipeline.payments import inbox as inbox_module
from billing_pipeline.payments.cli import webhooks_app

pytest_plugins = ["test_payments_support"]  # fixtures: providers, receiver
pytestmark = pytest.mark.slow
ACTOR = "run:test"


def _db_now(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT now()")).scalar_one()


def _audit(engine, entity_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT action, from_state, to_state, actor FROM billing.audit_log WHERE entity_id = :e"
                " ORDER BY audit_id"
            ),
            {"e": entity_id},
        ).all()


@pytest.mark.parametrize("batch_size", [1, 500])
def test_duplicate_and_out_of_order_stripe_deliveries_leave_one_correct_payment(
    receiver, providers, engine, batch_size
):
    url, _ = receiver
    state, _ = providers
    charge = state.add_charge(5000, "usd", customer="cus_1", status="pending", metadata={"invoice_id": "17"})
    snapshots = {"pending": dict(charge)}
    snapshots["succeeded"] = {**charge, "status": "succeeded", "captured": True, "paid": True}
    snapshots["failed"] = {**charge, "status": "failed"}  # a stale attempt, delivered late
    snapshots["refunded"] = {**snapshots["succeeded"], "amount_refunded": 2000}
    events = [state.add_event(f"charge.{kind}", obj) for kind, obj in snapshots.items()]
    deliveries = events + events[1:3] + [events[3]]  # succeeded, failed and refunded delivered twice
    random.Random(batch_size).shuffle(deliveries)
    deliveries.sort(key=lambda e: e["type"] != "charge.refunded")  # the refund first: the worst order

    for event in deliveries:
        assert stripe_fake.deliver_webhook(f"{url}/webhooks/stripe", event, STRIPE_SECRET).status_code == 200
    result = inbox_module.process_inbox(engine, ["stripe"], actor=ACTOR, batch_size=batch_size)

    assert result.processed_total == 4 and result.retried == 0 and not result.dead_lettered
    [row] = payments(engine).values()
    assert (row["object_id"], row["status"], row["provider_status"]) == (
        charge["id"],
        "partially_refunded",
        "succeeded",
    )
    assert (row["amount_minor"], row["amount_refunded_minor"], row["currency"]) == (5000, 2000, "USD")
    assert (row["invoice_ref"], row["provider_customer_id"], row["first_seen_via"]) == (
        "17",
        "cus_1",
        "webhook",
    )
    assert row["webhook_seen_at"] is not None
    assert all(r["processed_at"] is not None and r["attempts"] == 1 for r in inbox(engine))
    audit = _audit(engine, f"stripe:{charge['id']}")  # recorded at its final state; nothing after moved it
    assert [tuple(a) for a in audit] == [("payment_recorded", None, "partially_refunded", ACTOR)]

    again = inbox_module.process_inbox(engine, ["stripe"], actor=ACTOR)
    assert again.processed_total == 0 and len(_audit(engine, f"stripe:{charge['id']}")) == len(audit)


def test_razorpay_late_authorization_is_the_one_backward_move_and_a_late_failure_is_ignored(
    receiver, providers, engine
):
    url, _ = receiver
    _, rzp = providers
    hook = f"{url}/webhooks/razorpay"
    late = rzp.add_payment(1000, status="failed")
    order = rzp.add_order(2000, notes={"invoice_id": "3"})
    captured = rzp.add_payment(2000, status="captured", order_id=order["id"])
    order = rzp.get("orders", order["id"])
    assert order["status"] == "paid"

    def deliver(name, event_id, **entities):
        answer = razorpay_fake.deliver_webhook(
            hook, razorpay_fake.webhook_event(name, **entities), RZP_WEBHOOK_SECRET, event_id=event_id
        )
        assert answer.status_code == 200

    deliver("payment.failed", "e1", payment=late)
    inbox_module.process_inbox(engine, ["razorpay"], actor=ACTOR)
    deliver("payment.authorized", "e2", payment={**late, "status": "authorized"})
    deliver("order.paid", "e3", order=order, payment=captured)
    deliver("payment.failed", "e4", payment={**captured, "status": "failed"})
    inbox_module.process_inbox(engine, ["razorpay"], actor=ACTOR)

    rows = payments(engine)
    assert rows[late["id"]]["status"] == "authorized"
    assert rows[captured["id"]]["status"] == "captured"
    assert (rows[order["id"]]["object_type"], rows[order["id"]]["status"]) == ("order", "captured")
    assert rows[captured["id"]]["parent_object_id"] == order["id"]
    assert rows[captured["id"]]["fee_minor"] == captured["fee"]
    assert [(a.from_state, a.to_state) for a in _audit(engine, f"razorpay:{late['id']}")] == [
        (None, "failed"),
        ("failed", "authorized"),
    ]


def test_retry_delays_grow_from_one_second_to_one_hour():
    delays = [inbox_module.retry_delay(n).total_seconds() for n in range(1, inbox_module.MAX_ATTEMPTS)]
    assert delays[0] == 1 and delays[-1] == 3600
    assert [round(d) for d in delays] == [1, 15, 235, 3600]


def test_poison_events_reach_the_dead_letters_after_five_attempts_and_replay(receiver, providers, engine):
    url, _ = receiver
    state, _ = providers
    hook = f"{url}/webhooks/stripe"
    good = state.add_charge(700, "usd")
    blocked = state.add_charge(800, "usd", id="ch_blocked")
    unreadable = {**state.add_charge(900, "usd"), "currency": "xxx"}
    for obj in (good, blocked, unreadable):
        stripe_fake.deliver_webhook(hook, state.add_event("charge.succeeded", obj), STRIPE_SECRET)
    # a downstream failure that the whole batch hits: the set is retried event by event
    with engine.begin() as conn:
        conn.exec_driver_sql("""
            CREATE FUNCTION billing.test_block() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.object_id = 'ch_blocked' THEN RAISE EXCEPTION 'blocked by test'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_block BEFORE INSERT ON billing.payments
                FOR EACH ROW EXECUTE FUNCTION billing.test_block();
        """)

    now = _db_now(engine)
    seen_attempts = []
    for attempt in range(1, inbox_module.MAX_ATTEMPTS + 1):
        if attempt > 1:  # a millisecond before its backoff ends, nothing is due
            early = inbox_module.process_inbox(
                engine, ["stripe"], actor=ACTOR, now=now - timedelta(milliseconds=1)
            )
            assert early.processed_total == 0 and early.retried == 0 and not early.dead_lettered
        result = inbox_module.process_inbox(engine, ["stripe"], actor=ACTOR, now=now)
        rows = {r["event_id"]: r for r in inbox(engine)}
        failing = [r for r in rows.values() if r["processed_at"] is None]
        seen_attempts.append(sorted(r["attempts"] for r in failing))
        if attempt < inbox_module.MAX_ATTEMPTS:
            assert result.retried == 2 and not result.dead_lettered
            assert all(r["next_attempt_at"] == now + inbox_module.retry_delay(attempt) for r in failing)
            now += inbox_module.retry_delay(attempt)
    assert seen_attempts == [[n, n] for n in range(1, 6)]
    assert result.processed_total == 0 and result.retried == 0 and len(result.dead_lettered) == 2
    assert set(payments(engine)) == {good["id"]}  # the good event went through on the first attempt
    with engine.connect() as conn:
        letters = {r.event_id: r for r in conn.execute(sa.text("SELECT * FROM billing.webhook_dead_letters"))}
    assert {r.attempts for r in letters.values()} == {5}
    errors = sorted(r.last_error for r in letters.values())
    assert "blocked by test" in errors[0] and "unsupported currency 'xxx'" in errors[1]
    assert (
        inbox_module.process_inbox(
            engine, ["stripe"], actor=ACTOR, now=now + timedelta(days=1)
        ).processed_total
        == 0
    )  # dead stays dead

    with engine.begin() as conn:  # the cause is fixed
        conn.exec_driver_sql("DROP TRIGGER test_block ON billing.payments")
    runner = CliRunner()
    listed = runner.invoke(webhooks_app, ["dead"])
    assert listed.exit_code == 0 and "2 dead letter(s) waiting" in listed.output
    blocked_letter = next(r for r in letters.values() if "blocked" in r.last_error)
    replayed = runner.invoke(webhooks_app, ["replay", "--id", str(blocked_letter.dead_letter_id)])
    assert replayed.exit_code == 0, replayed.output
    assert "1 dead letter(s) replayed" in replayed.output
    assert runner.invoke(webhooks_app, ["replay", "--id", str(blocked_letter.dead_letter_id)]).exit_code == 1

    after = inbox_module.process_inbox(engine, ["stripe"], actor=ACTOR)
    assert after.processed_total == 1
    assert set(payments(engine)) == {good["id"], "ch_blocked"}
    assert [a.action for a in _audit(engine, f"stripe:{blocked_letter.event_id}")] == ["dead_letter_replayed"]
    assert "1 dead letter(s) waiting" in runner.invoke(webhooks_app, ["dead"]).output


def test_a_handler_registers_in_one_line_and_only_its_provider_is_processed(engine, monkeypatch):
    # this test's own registry: stripe and razorpay as registered, vapi not yet (whatever was imported before)
    monkeypatch.setattr(
        inbox_module, "_HANDLERS", {p: h for p, h in inbox_module._HANDLERS.items() if p != "vapi"}
    )
    applied = []
    with engine.begin() as conn:
        for n in range(3):
            inbox_module.store_event(conn, "vapi", f"call_{n}", "end-of-call-report", b'{"n": %d}' % n)
        inbox_module.store_event(
            conn,
            "stripe",
            "evt_other",
            "customer.created",
            b'{"id": "evt_other", "data": {"object": {"object": "customer"}}}',
        )
    with pytest.raises(ValueError, match="no inbox handler registered for vapi"):
        inbox_module.process_inbox(engine, ["vapi"], actor=ACTOR)

    inbox_module.register_handler(
        "vapi",
        lambda conn, events, actor: applied.extend(events)
        or {e.inbox_id: "odd" for e in events if e.payload["n"] % 2},
    )
    result = inbox_module.process_inbox(engine, ["vapi"], actor=ACTOR)

    assert [e.event_id for e in applied] == ["call_0", "call_1", "call_2"]
    assert result.processed == {("vapi", "end-of-call-report"): 2} and result.retried == 1
    rows = {r["event_id"]: r for r in inbox(engine)}
    assert rows["call_1"]["last_error"] == "odd" and rows["call_1"]["processed_at"] is None
    assert rows["evt_other"]["processed_at"] is None  # stripe was not asked for
    assert handlers.PROVIDERS == ("stripe", "razorpay")
    assert inbox_module.process_inbox(engine, ["stripe"], actor=ACTOR).processed == {
        ("stripe", "customer.created"): 1
    }  # an event about another object counts as applied
