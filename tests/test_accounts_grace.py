"""Grace periods with an injected clock: one expiring, a payment on its last day, a payment after it."""

from __future__ import annotations

from datetime import timedelta

from test_accounts_support import (
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
from billing_pipeline.accounts.grace import run_grace

FAILED_AT = utc(2026, 3, 3, 10)


def _org_status(engine, org: str) -> str:
    return rows(engine, "SELECT status FROM billing.organisations WHERE organisation_id = :o", o=org)[0][
        "status"
    ]


def _grace(engine) -> dict:
    (g,) = rows(engine, "SELECT * FROM billing.grace_periods")
    return g


def test_grace_period_expiring_restricts_then_a_payment_restores(engine):
    with engine.begin() as conn:
        add_org(conn, "acme", add_plan(conn), customer="cus_acme")
        invoice = add_invoice(conn, "acme", 5000)
    record_charges(engine, stripe_charge(invoice, status="failed", at=FAILED_AT, customer="cus_acme"))
    clock = FixedClock(utc(2026, 3, 3, 9))

    assert run_grace(engine, as_of=clock.now(), actor="test").opened == []  # before the failure

    result = run_grace(engine, as_of=clock.advance(timedelta(hours=15)), actor="test")
    assert [
        (g["invoice_id"], g["started_at"], g["ends_at"], g["grace_days"], g["balance_minor"])
        for g in result.opened
    ] == [(invoice["invoice_id"], FAILED_AT, FAILED_AT + timedelta(days=7), 7, 5000)]
    assert _org_status(engine, "acme") == "grace"  # keeps access during the grace period

    clock.at = FAILED_AT + timedelta(days=7, microseconds=-1)
    assert run_grace(engine, as_of=clock.now(), actor="test").closed == []
    assert _org_status(engine, "acme") == "grace"

    result = run_grace(engine, as_of=clock.advance(timedelta(microseconds=1)), actor="test")
    assert [(g["from_status"], g["to_status"]) for g in result.closed] == [("open", "expired")]
    assert _org_status(engine, "acme") == "restricted"
    assert _grace(engine)["expired_at"] == FAILED_AT + timedelta(days=7)

    again = run_grace(engine, as_of=clock.advance(timedelta(days=1)), actor="test")
    assert (again.opened, again.closed, again.status_changes, again.notifications_queued) == ([], [], [], 0)

    record_charges(engine, stripe_charge(invoice, status="succeeded", at=clock.now(), customer="cus_acme"))
    result = run_grace(engine, as_of=clock.advance(timedelta(days=1)), actor="test")
    assert [(g["from_status"], g["to_status"]) for g in result.closed] == [("expired", "paid")]
    assert _org_status(engine, "acme") == "active"
    grace = _grace(engine)
    assert (grace["status"], grace["paid_at"], grace["expired_at"]) == (
        "paid",
        clock.now(),
        FAILED_AT + timedelta(days=7),
    )

    gid = str(grace["grace_id"])
    assert audit(engine, "grace_period") == [
        (gid, "opened", None, "open"),
        (gid, "expired", "open", "expired"),
        (gid, "paid", "expired", "paid"),
    ]
    assert audit(engine, "organisation") == [
        ("acme", "grace_started", "active", "grace"),
        ("acme", "restricted", "grace", "restricted"),
        ("acme", "restored", "restricted", "active"),
    ]
    notes = outbox(engine)
    assert [n["kind"] for n in notes] == ["grace_started", "grace_expired", "payment_received"]
    assert "2026-03-10 10:00 UTC" in notes[0]["body"] and "50.00 USD" in notes[0]["body"]
    assert "no longer restricted" in notes[2]["body"]


def test_payment_on_the_last_day_of_grace_ends_it_without_a_restriction(engine):
    with engine.begin() as conn:
        add_org(conn, "beta", add_plan(conn, "short", grace_days=3), customer="cus_beta")
        add_org(conn, "bystander", add_plan(conn, "other"), customer="cus_by")
        invoice = add_invoice(conn, "beta", 1234)
    record_charges(engine, stripe_charge(invoice, status="failed", at=FAILED_AT, customer="cus_beta"))
    assert run_grace(engine, as_of=utc(2026, 3, 4), actor="test").opened[0][
        "ends_at"
    ] == FAILED_AT + timedelta(days=3)

    last_day = FAILED_AT + timedelta(days=3, minutes=-30)  # 2026-03-06 09:30, grace ends at 10:00
    record_charges(engine, stripe_charge(invoice, status="succeeded", at=last_day, customer="cus_beta"))
    # decided after the grace period's end: the payment, made before it, wins over the expiry
    result = run_grace(engine, as_of=utc(2026, 3, 7), actor="test")
    assert [(g["from_status"], g["to_status"]) for g in result.closed] == [("open", "paid")]
    assert _org_status(engine, "beta") == "active" and _org_status(engine, "bystander") == "active"

    for day in (8, 9, 20):
        assert run_grace(engine, as_of=utc(2026, 3, day), actor="test").closed == []
    assert _org_status(engine, "beta") == "active"
    assert [a[1] for a in audit(engine, "organisation")] == ["grace_started", "restored"]
    assert [n["kind"] for n in outbox(engine)] == ["grace_started", "payment_received"]


def test_paid_or_unreferenced_failures_open_no_grace_period(engine):
    with engine.begin() as conn:
        add_org(conn, "gamma", add_plan(conn), customer="cus_g")
        paid = add_invoice(conn, "gamma", 700)
        unpaid = add_invoice(conn, "gamma", 900, month="2026-01-01")
    failed = stripe_charge(paid, status="failed", at=FAILED_AT, customer="cus_g")
    # names no invoice: not attributable to the unpaid one, whatever its amount
    unreferenced = {**stripe_charge(unpaid, status="failed", at=FAILED_AT, customer="cus_g"), "metadata": {}}
    record_charges(
        engine,
        failed,
        unreferenced,
        stripe_charge(paid, status="succeeded", at=FAILED_AT + timedelta(hours=1), customer="cus_g"),
    )
    result = run_grace(engine, as_of=utc(2026, 3, 20), actor="test")
    assert (result.opened, result.status_changes) == ([], [])
    assert _org_status(engine, "gamma") == "active"
