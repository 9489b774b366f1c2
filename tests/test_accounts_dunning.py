"""Dunning through the real Stripe SDK against the FAKE Stripe server: a crash between the provider call
and the commit never charges twice; declines, later slots, the end of retries once paid."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from test_accounts_support import (
    SK,
    add_invoice,
    add_org,
    add_plan,
    audit,
    outbox,
    record_charges,
    rows,
    stripe_charge,
    utc,
)

from billing_pipeline.accounts.clock import FixedClock
from billing_pipeline.accounts.dunning import run_dunning
from billing_pipeline.accounts.grace import run_grace
from billing_pipeline.providers.stripe_api import make_client

FAILED_AT = utc(2026, 3, 3, 10)
DAYS = [1, 3, 5, 7]
CRASH = """
CREATE FUNCTION pg_temp_crash() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'simulated crash before the commit'; END $$;
CREATE TRIGGER crash_before_commit BEFORE UPDATE ON billing.dunning_attempts
    FOR EACH ROW EXECUTE FUNCTION pg_temp_crash();
"""

pytest_plugins = ["test_accounts_support"]  # fixture: fake_stripe


def _in_grace(engine, org="acme", customer="cus_acme", provider="stripe", total=5000) -> dict:
    with engine.begin() as conn:
        add_org(conn, org, add_plan(conn, f"plan_{org}"), provider=provider, customer=customer)
        invoice = add_invoice(conn, org, total)
    record_charges(
        engine, stripe_charge(invoice, status="failed", at=FAILED_AT, customer=customer or "cus_x")
    )
    assert len(run_grace(engine, as_of=FAILED_AT + timedelta(hours=1), actor="test").opened) == 1
    return invoice


def _attempts(engine) -> list[dict]:
    return rows(engine, "SELECT * FROM billing.dunning_attempts ORDER BY attempt_id")


def _dun(engine, url, clock):
    return run_dunning(
        engine, make_client(SK, url), as_of=clock.now(), clock=clock, actor="test", retry_days=DAYS
    )


def _posts(state):
    return state.requests_to("/v1/payment_intents", "POST")


def test_retry_after_a_crash_between_the_provider_call_and_the_commit_charges_once(engine, fake_stripe):
    state, url = fake_stripe
    invoice = _in_grace(engine)
    clock = FixedClock(FAILED_AT + timedelta(days=1, hours=1))
    with engine.begin() as conn:
        conn.execute(sa.text(CRASH.replace("pg_temp_crash", "billing.test_crash")))

    with pytest.raises(sa.exc.DBAPIError, match="simulated crash"):
        _dun(engine, url, clock)
    (attempt,) = _attempts(engine)
    assert (attempt["status"], attempt["attempt"], attempt["idempotency_key"]) == (
        "pending",
        1,
        f"dunning:{invoice['invoice_id']}:1",
    )
    assert len(state.all("charges")) == 1  # the provider charged; we never recorded it

    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER crash_before_commit ON billing.dunning_attempts"))
    result = _dun(engine, url, clock)  # the next run repeats the pending attempt
    assert result.claimed == [] and result.counts()["succeeded"] == 1

    assert {p.idempotency_key for p in _posts(state)} == {attempt["idempotency_key"]}
    assert len(_posts(state)) == 2  # the same request twice, answered once
    assert len(state.all("payment_intents")) == 1 and len(state.all("charges")) == 1
    (done,) = _attempts(engine)
    (intent,) = state.all("payment_intents")
    assert (done["status"], done["provider_object_id"], done["amount_minor"]) == (
        "succeeded",
        intent["id"],
        5000,
    )
    assert intent["metadata"]["dunning_key"] == attempt["idempotency_key"] and intent["amount"] == 5000
    assert audit(engine, "dunning_attempt") == [
        (str(done["attempt_id"]), "claimed", None, "pending"),
        (str(done["attempt_id"]), "charged", "pending", "succeeded"),
    ]

    # the charge is in the ledger and settles the invoice: the grace period ends paid
    (balance,) = rows(
        engine, "SELECT * FROM billing.invoice_balances WHERE invoice_id = :i", i=invoice["invoice_id"]
    )
    assert balance["settlement_state"] == "paid"
    assert run_grace(engine, as_of=clock.now(), actor="test").closed[0]["to_status"] == "paid"
    # and no later slot is ever claimed
    clock.advance(timedelta(days=10))
    assert _dun(engine, url, clock).claimed == [] and len(_posts(state)) == 2


def test_a_pending_attempt_is_not_sent_once_its_invoice_was_paid_another_way(engine, fake_stripe):
    state, url = fake_stripe
    invoice = _in_grace(engine)
    clock = FixedClock(FAILED_AT + timedelta(days=1, hours=1))
    unreachable = run_dunning(  # the send never reaches the provider: the attempt stays pending
        engine, make_client(SK, "http://127.0.0.1:9"), as_of=clock.now(), clock=clock, actor="test",
        retry_days=DAYS,
    )
    assert [a["status"] for a in _attempts(engine)] == ["pending"] and unreachable.counts()["succeeded"] == 0
    record_charges(engine, stripe_charge(invoice, status="succeeded", at=clock.now(), customer="cus_acme"))

    _dun(engine, url, clock)

    assert _posts(state) == [] and state.all("charges") == []  # never a second charge
    (attempt,) = _attempts(engine)
    assert (attempt["status"], attempt["error_message"]) == ("canceled", "invoice paid before this attempt was sent")
    assert audit(engine, "dunning_attempt")[-1] == (str(attempt["attempt_id"]), "canceled", "pending", "canceled")


def test_an_attempt_pending_longer_than_stripe_keeps_keys_is_found_not_recreated(engine, fake_stripe):
    state, url = fake_stripe
    _in_grace(engine)
    clock = FixedClock(FAILED_AT + timedelta(days=1, hours=1))
    with engine.begin() as conn:
        conn.execute(sa.text(CRASH.replace("pg_temp_crash", "billing.test_crash")))
    with pytest.raises(sa.exc.DBAPIError):
        _dun(engine, url, clock)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER crash_before_commit ON billing.dunning_attempts"))

    clock.advance(timedelta(days=2))  # past Stripe's 24 h: the key may be forgotten
    assert _dun(engine, url, clock).counts()["succeeded"] == 1
    assert len(_posts(state)) == 1 and len(state.all("charges")) == 1
    assert state.requests_to("/v1/payment_intents", "GET")  # looked up by its key in the metadata


def test_declined_retries_follow_the_schedule_and_stop_when_paid(engine, fake_stripe):
    state, url = fake_stripe
    state.declined_customers.add("cus_acme")
    invoice = _in_grace(engine)
    clock = FixedClock(FAILED_AT + timedelta(hours=23))
    assert _dun(engine, url, clock).claimed == []  # day 1 not reached yet

    clock.advance(timedelta(hours=2))
    first = _dun(engine, url, clock)
    assert [(r["attempt"], r["status"], r["error_code"]) for r in first.results] == [
        (1, "failed", "insufficient_funds")
    ]
    assert _dun(engine, url, clock).claimed == []  # slot 1 done; slot 2 is due on day 3

    # the schedule was not run for days: only the latest due slot (day 5) is tried, not 2 and 3
    clock.advance(timedelta(days=4))
    late = _dun(engine, url, clock)
    assert [(r["attempt"], r["status"]) for r in late.results] == [(3, "failed")]
    assert [a["attempt"] for a in _attempts(engine)] == [1, 3]
    assert {p.idempotency_key for p in _posts(state)} == {
        f"dunning:{invoice['invoice_id']}:{k}" for k in (1, 3)
    }
    notes = [n for n in outbox(engine) if n["kind"] == "payment_retry_failed"]
    assert [n["subject"] for n in notes] == [
        f"Payment retry {k} of 4 failed for invoice {invoice['number']}" for k in (1, 3)
    ]

    record_charges(engine, stripe_charge(invoice, status="succeeded", at=clock.now(), customer="cus_acme"))
    clock.advance(timedelta(days=2))
    assert _dun(engine, url, clock).claimed == []  # paid: day 7 is not tried
    assert len(_posts(state)) == 2


def test_organisations_stripe_cannot_charge_are_asked_to_pay(engine, fake_stripe):
    state, url = fake_stripe
    invoice = _in_grace(engine, org="rzp", customer="cust_rzp", provider="razorpay")
    result = _dun(engine, url, FixedClock(FAILED_AT + timedelta(days=1, hours=1)))
    assert [(c["status"], c["attempt"]) for c in result.claimed] == [("skipped", 1)]
    assert "razorpay" in result.claimed[0]["error_message"] and _posts(state) == []
    (note,) = [n for n in outbox(engine) if n["kind"] == "payment_action_required"]
    assert note["organisation_id"] == "rzp" and invoice["number"] in note["subject"]
