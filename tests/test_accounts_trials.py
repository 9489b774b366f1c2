"""Trials with an injected clock: a trial ending at a month boundary, its reminder the day before."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from test_accounts_support import add_org, add_plan, audit, outbox, rows, utc

from billing_pipeline.accounts.clock import FixedClock
from billing_pipeline.accounts.trials import run_trials

FEB_1 = utc(2026, 2, 1)  # the trials end exactly at the month boundary


def _statuses(engine) -> dict[str, str]:
    return {r["organisation_id"]: r["status"] for r in rows(engine, "SELECT * FROM billing.organisations")}


def test_trial_ending_at_a_month_boundary(engine):
    with engine.begin() as conn:
        plan = add_plan(conn)
        add_org(conn, "free", plan, status="trialing", provider="none", trial_ends_at=FEB_1)
        add_org(
            conn, "card", plan, status="trialing", provider="stripe", customer="cus_card", trial_ends_at=FEB_1
        )
        add_org(
            conn, "later", plan, status="trialing", provider="none", trial_ends_at=FEB_1 + timedelta(days=4)
        )
        add_org(conn, "paying", plan, status="active", customer="cus_paying")
    clock = FixedClock(utc(2026, 1, 30))  # the accounts run for Jan 29 decides as of Jan 30 00:00

    # two days before the end: too early for a reminder
    assert run_trials(engine, as_of=clock.now(), actor="test").reminders == []

    # the day before (Jan 31): both trials ending on Feb 1 are reminded, nothing ends
    result = run_trials(engine, as_of=clock.advance(timedelta(days=1)), actor="test")
    assert sorted(r["organisation_id"] for r in result.reminders) == ["card", "free"]
    assert result.ended == [] and result.notifications_queued == 2
    reminders = {n["organisation_id"]: n for n in outbox(engine)}
    assert reminders["free"]["kind"] == "trial_ending" and "downgraded" in reminders["free"]["body"]
    assert "payment method on file" in reminders["card"]["body"]
    assert reminders["card"]["next_attempt_at"] == clock.now()

    # a second run as of the same instant queues nothing again
    assert run_trials(engine, as_of=clock.now(), actor="test").notifications_queued == 0
    assert len(outbox(engine)) == 2

    # one microsecond before the boundary the trials are still running
    assert run_trials(engine, as_of=FEB_1 - timedelta(microseconds=1), actor="test").ended == []
    assert _statuses(engine)["free"] == "trialing"

    # at the boundary (the run for Jan 31): without a payment method downgraded, with one it continues
    result = run_trials(engine, as_of=FEB_1, actor="test")
    assert {e["organisation_id"]: e["status"] for e in result.ended} == {
        "free": "downgraded",
        "card": "active",
    }
    assert _statuses(engine) == {
        "free": "downgraded",
        "card": "active",
        "later": "trialing",
        "paying": "active",
    }
    assert sorted(audit(engine, "organisation")) == [
        ("card", "trial_ended", "trialing", "active"),
        ("free", "trial_ended", "trialing", "downgraded"),
    ]
    ended = [n for n in outbox(engine) if n["kind"] == "trial_ended"]
    assert sorted(n["organisation_id"] for n in ended) == ["card", "free"]

    # reruns change nothing and announce nothing twice
    again = run_trials(engine, as_of=FEB_1 + timedelta(hours=3), actor="test")
    assert again.ended == [] and again.notifications_queued == 0
    assert len(audit(engine, "organisation")) == 2 and len(outbox(engine)) == 4


def test_trial_without_end_date_ends_after_the_plans_trial_days(engine):
    with engine.begin() as conn:
        plan = add_plan(conn, "trial14")
        conn.execute(sa.text("UPDATE billing.plans SET trial_days = 14 WHERE plan_id = :p"), {"p": plan})
        add_org(conn, "new", plan, status="trialing", provider="none")
        created = conn.execute(
            sa.text("SELECT created_at FROM billing.organisations WHERE organisation_id = 'new'")
        ).scalar_one()
    assert run_trials(engine, as_of=created + timedelta(days=14, seconds=-1), actor="test").ended == []
    result = run_trials(engine, as_of=created + timedelta(days=14), actor="test")
    assert [(e["organisation_id"], e["status"], e["trial_ended_at"]) for e in result.ended] == [
        ("new", "downgraded", created + timedelta(days=14))
    ]
