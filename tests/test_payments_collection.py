"""Payment collection of finalized invoices through the real Stripe and Razorpay SDKs against the FAKE
servers: a SIGKILL between the provider call and its recording charges once; two concurrent runs charge
once per invoice; a decline opens the grace period and dunning retries; a paid link settles its invoice."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from test_accounts_support import SK, add_invoice, add_org, add_plan, audit, outbox, rows, utc
from test_payments_support import RZP_ID, RZP_SECRET, RZP_WEBHOOK_SECRET

from billing_pipeline.accounts.clock import FixedClock
from billing_pipeline.accounts.dunning import run_dunning
from billing_pipeline.fakes import razorpay_fake
from billing_pipeline.payments import handlers, inbox
from billing_pipeline.payments.collection import collect_month
from billing_pipeline.payments.settlement import settle_invoices
from billing_pipeline.providers import razorpay_api, stripe_api

pytest_plugins = ["test_accounts_support", "test_payments_support"]  # fake_stripe; providers, receiver

MONTH = date(2026, 2, 1)
NOW = utc(2026, 3, 1, 6)


def _org_invoice(engine, org, total, *, provider="stripe", customer=None, currency="USD") -> dict:
    with engine.begin() as conn:
        add_org(
            conn,
            org,
            add_plan(conn, f"plan_{org}", currency=currency),
            provider=provider,
            customer=customer,
            currency=currency,
        )
        return add_invoice(conn, org, total, month=str(MONTH))


def _collect(engine, stripe_url=None, rzp_url=None, clock=None, **kw):
    return collect_month(
        engine,
        MONTH,
        stripe_client=stripe_api.make_client(SK, stripe_url) if stripe_url else None,
        razorpay_client=razorpay_api.make_client(RZP_ID, RZP_SECRET, rzp_url) if rzp_url else None,
        clock=clock or FixedClock(NOW),
        actor="test",
        **kw,
    )


def _balance(engine, invoice) -> dict:
    (b,) = rows(
        engine, "SELECT * FROM billing.invoice_balances WHERE invoice_id = :i", i=invoice["invoice_id"]
    )
    return b


def test_stripe_invoice_is_charged_once_with_its_key_and_settled(engine, fake_stripe):
    state, url = fake_stripe
    invoice = _org_invoice(engine, "acme", 4200, customer="cus_acme")
    zero = _org_invoice(engine, "zero", 0, customer="cus_zero")

    result = _collect(engine, url)
    assert result.counts() == {"succeeded": 1, "nothing_due": 1}

    (post,) = state.requests_to("/v1/payment_intents", "POST")
    assert post.idempotency_key == f"collect:{invoice['invoice_id']}"
    assert post.params["metadata[invoice_id]"] == str(invoice["invoice_id"])
    assert post.params["metadata[organisation_id]"] == "acme"
    assert (post.params["amount"], post.params["confirm"], post.params["off_session"]) == (
        "4200",
        "true",
        "true",
    )
    assert _balance(engine, invoice)["settlement_state"] == "paid"
    assert _balance(engine, zero)["settlement_state"] == "paid"  # no provider call for a zero total
    assert len(state.all("charges")) == 1
    # a second run claims nothing and calls nothing
    assert _collect(engine, url).claimed == [] and len(state.requests_to("/v1/payment_intents", "POST")) == 1
    assert sorted(a[1:] for a in audit(engine, "collection_attempt")) == [
        ("charged", "pending", "succeeded"),
        ("claimed", None, "nothing_due"),
        ("claimed", None, "pending"),
    ]


_KILLED_RUN = """
import os, signal, sys
from datetime import date, datetime
from billing_pipeline.accounts.clock import FixedClock
from billing_pipeline.payments.collection import collect_month
from billing_pipeline.providers.stripe_api import make_client
from billing_pipeline.settings import load_settings
from billing_pipeline.warehouse import get_engine
collect_month(get_engine(load_settings()), date(2026, 2, 1), stripe_client=make_client(sys.argv[1], sys.argv[2]),
              razorpay_client=None, clock=FixedClock(datetime.fromisoformat(sys.argv[3])), actor="killed",
              after_calls=lambda: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_sigkill_between_the_provider_call_and_its_recording_then_rerun_charges_once(engine, fake_stripe):
    state, url = fake_stripe
    invoice = _org_invoice(engine, "acme", 4200, customer="cus_acme")

    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, SK, url, NOW.isoformat()],
        env=os.environ.copy(),
        timeout=120,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert len(state.all("charges")) == 1  # the provider charged; the warehouse never heard of it
    assert rows(engine, "SELECT status FROM billing.collection_attempts") == [{"status": "pending"}]
    assert rows(engine, "SELECT * FROM billing.payments") == []

    result = _collect(engine, url)

    assert result.claimed == [] and result.counts() == {"succeeded": 1}
    posts = state.requests_to("/v1/payment_intents", "POST")
    assert len(posts) == 2 and {p.idempotency_key for p in posts} == {f"collect:{invoice['invoice_id']}"}
    assert len(state.all("charges")) == 1 and len(state.all("payment_intents")) == 1
    charges = rows(engine, "SELECT * FROM billing.payments WHERE object_type = 'charge'")
    assert len(charges) == 1 and charges[0]["amount_minor"] == 4200
    assert _balance(engine, invoice)["paid_minor"] == 4200


def test_past_stripe_key_lifetime_the_intent_is_found_by_metadata_not_created_again(engine, fake_stripe):
    state, url = fake_stripe
    _org_invoice(engine, "acme", 4200, customer="cus_acme")
    with pytest.raises(RuntimeError, match="stop"):
        _collect(engine, url, after_calls=lambda: (_ for _ in ()).throw(RuntimeError("stop")))
    state._idempotency.clear()  # Stripe pruned the key after 24 h

    _collect(engine, url, clock=FixedClock(NOW + timedelta(days=2)))

    assert len(state.requests_to("/v1/payment_intents", "POST")) == 1
    assert len(state.all("payment_intents")) == 1
    assert rows(engine, "SELECT status FROM billing.collection_attempts") == [{"status": "succeeded"}]


def test_two_concurrent_runs_for_one_month_charge_each_invoice_once(engine, fake_stripe):
    state, url = fake_stripe
    invoices = [_org_invoice(engine, f"org{i}", 1000 + i, customer=f"cus_{i}") for i in range(12)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run():
        try:
            barrier.wait()
            _collect(engine, url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert errors == []
    charges = state.all("charges")
    assert sorted(c["metadata"]["invoice_id"] for c in charges) == sorted(
        str(i["invoice_id"]) for i in invoices
    )
    assert rows(
        engine, "SELECT count(*) AS n FROM billing.collection_attempts WHERE status = 'succeeded'"
    ) == [{"n": 12}]
    assert rows(engine, "SELECT count(*) AS n FROM billing.payments WHERE object_type = 'charge'") == [
        {"n": 12}
    ]
    assert all(_balance(engine, i)["paid_minor"] == i["total_minor"] for i in invoices)


def test_a_decline_opens_the_grace_period_and_dunning_retries(engine, fake_stripe):
    state, url = fake_stripe
    state.declined_customers.add("cus_broke")
    invoice = _org_invoice(engine, "broke", 5000, customer="cus_broke")
    now = datetime.now(UTC)  # the fake dates its objects by the wall clock, in whole seconds
    # the run's clock reads after the decline it made (a fixed clock taken before it could read earlier)
    result = _collect(engine, url, clock=FixedClock(now + timedelta(minutes=1)))

    assert result.counts() == {"failed": 1} and result.grace_opened == 1
    (attempt,) = rows(engine, "SELECT * FROM billing.collection_attempts")
    assert (attempt["status"], attempt["error_code"]) == ("failed", "insufficient_funds")
    (grace,) = rows(engine, "SELECT * FROM billing.grace_periods")
    assert (grace["invoice_id"], grace["status"], grace["balance_minor"]) == (
        invoice["invoice_id"],
        "open",
        5000,
    )
    assert "grace_started" in [n["kind"] for n in outbox(engine)]

    state.declined_customers.clear()  # the customer fixed the card; dunning's first retry succeeds
    clock = FixedClock(now + timedelta(days=1, hours=1))
    dunning = run_dunning(
        engine,
        stripe_api.make_client(SK, url),
        as_of=clock.now(),
        clock=clock,
        actor="test",
        retry_days=[1, 3, 5, 7],
    )
    assert dunning.counts()["succeeded"] == 1
    assert _balance(engine, invoice)["settlement_state"] == "paid"


def test_declined_test_card_is_refused_by_the_fake(fake_stripe):
    _state, url = fake_stripe
    client = stripe_api.make_client(SK, url)
    with pytest.raises(Exception) as exc_info:
        client.v1.payment_intents.create(
            params={
                "amount": 100,
                "currency": "usd",
                "confirm": True,
                "payment_method": "pm_card_chargeDeclined",
            }
        )
    assert getattr(exc_info.value, "code", None) == "card_declined"
    # the same key with other parameters is Stripe's idempotency error
    client.v1.payment_intents.create(
        params={"amount": 100, "currency": "usd"}, options={"idempotency_key": "k1"}
    )
    import stripe

    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(
            params={"amount": 200, "currency": "usd"}, options={"idempotency_key": "k1"}
        )


def test_razorpay_invoice_gets_a_link_sent_by_the_outbox_and_the_paid_webhook_settles_it(
    engine, providers, receiver
):
    _, state = providers
    hook_url, _ = receiver
    invoice = _org_invoice(engine, "ind", 150000, provider="razorpay", currency="INR")
    at = FixedClock(utc(2030, 3, 1, 6))
    rzp = razorpay_api.make_client(RZP_ID, RZP_SECRET, os.environ["RAZORPAY_API_BASE"])

    def collect():
        return collect_month(engine, MONTH, stripe_client=None, razorpay_client=rzp, clock=at, actor="test")

    assert collect().counts() == {"link_sent": 1}
    (link,) = state.list_payment_links({"reference_id": invoice["number"]})["payment_links"]
    assert link["notes"]["invoice_id"] == str(invoice["invoice_id"]) and link["amount"] == 150000
    assert link["expire_by"] == int((at.now() + timedelta(days=14)).timestamp())
    (note,) = [n for n in outbox(engine) if n["dedupe_key"].startswith("payment_link:")]
    assert note["payload"]["url"] == link["short_url"] and link["short_url"] in note["body"]
    assert _balance(engine, invoice)["settlement_state"] == "unpaid"
    # a row left pending (a crash after the call) is sent again: the link is found, never made twice
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE billing.collection_attempts SET status = 'pending', completed_at = NULL")
        )
    assert collect().counts() == {"link_sent": 1}
    assert len(state.list_payment_links({})["payment_links"]) == 1

    event = state.pay_link(link["id"])
    resp = razorpay_fake.deliver_webhook(
        f"{hook_url}/webhooks/razorpay", event, RZP_WEBHOOK_SECRET, "evt_paid"
    )
    assert resp.status_code < 300, resp.text
    inbox.process_inbox(engine, handlers.PROVIDERS, actor="test")
    with engine.begin() as conn:
        settle_invoices(conn, actor="test")
    assert _balance(engine, invoice)["settlement_state"] == "paid"


def test_lineage_from_finalized_invoices_to_payment_reconciliation_is_in_the_asset_graph():
    from billing_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    chain = [
        "finalized_invoices",
        "payment_collection",
        "payments",
        "invoice_settlement",
        "payment_reconciliation",
    ]
    for upstream, downstream in itertools.pairwise(chain):
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert upstream in parents, (downstream, parents)
    node = graph.get(dg.AssetKey("payment_collection"))
    assert node.partitions_def is not None and "Monthly" in type(node.partitions_def).__name__
    assert node.group_name == "payments"


def test_a_wallet_that_pays_invoices_pays_first_and_the_provider_gets_the_rest(engine, fake_stripe):
    from billing_pipeline.wallet import ledger

    state, url = fake_stripe
    part = _org_invoice(engine, "part", 5000, customer="cus_part")
    whole = _org_invoice(engine, "whole", 5000, customer="cus_whole")
    other = _org_invoice(engine, "other", 5000, customer="cus_other")  # its catalog does not say so
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE billing.organisations SET wallet_pays_invoices = true WHERE organisation_id <> 'other'"
            )
        )
        for org, amount in (("part", 3000), ("whole", 8000), ("other", 9000)):
            ledger.top_up(conn, org, amount, "USD", f"topup-{org}", actor="test")

    result = _collect(engine, url)

    assert sorted((p["number"], p["amount_minor"]) for p in result.wallet_paid) == sorted(
        [(part["number"], 3000), (whole["number"], 5000)]
    )
    posts = {
        p.params["metadata[invoice_id]"]: p.params["amount"]
        for p in state.requests_to("/v1/payment_intents", "POST")
    }
    assert posts == {str(part["invoice_id"]): "2000", str(other["invoice_id"]): "5000"}
    for invoice in (part, whole, other):
        assert _balance(engine, invoice)["settlement_state"] == "paid"
    wallets = {
        r["organisation_id"]: r["balance_minor"] for r in rows(engine, "SELECT * FROM billing.wallets")
    }
    assert wallets == {"part": 0, "whole": 3000, "other": 9000}
    assert _collect(engine, url).wallet_paid == []  # once per invoice


def test_voiding_an_invoice_cancels_its_payment_link_and_a_paid_link_refuses_the_void(engine, providers):
    from billing_pipeline.invoicing import voids

    _, state = providers
    rzp = razorpay_api.make_client(RZP_ID, RZP_SECRET, os.environ["RAZORPAY_API_BASE"])
    first = _org_invoice(engine, "ind", 150000, provider="razorpay", currency="INR")
    second = _org_invoice(engine, "ind2", 90000, provider="razorpay", currency="INR")
    at = FixedClock(utc(2030, 3, 1, 6))
    assert collect_month(engine, MONTH, stripe_client=None, razorpay_client=rzp, clock=at,
                         actor="test").counts() == {"link_sent": 2}  # fmt: skip
    links = {l["reference_id"]: l for l in state.list_payment_links({})["payment_links"]}

    with pytest.raises(voids.VoidError, match="link .* to cancel first"):  # no client: nothing written
        voids.void_invoice(engine, first["number"], reason="wrong entity", actor="t")
    voided = voids.void_invoice(engine, first["number"], reason="wrong entity", actor="t", razorpay_client=rzp)

    link = state.get("payment_links", links[first["number"]]["id"])
    assert voided.payment_link_cancelled == link["id"] and link["status"] == "cancelled"
    with pytest.raises(ValueError, match="is cancelled"):
        state.pay_link(link["id"])  # the customer can no longer pay the void invoice
    assert audit(engine, "invoice")[-1][1:] == ("voided", "finalized", "void")

    state.pay_link(links[second["number"]]["id"])  # paid at Razorpay, not recorded here yet
    with pytest.raises(voids.VoidError, match="is paid at Razorpay"):
        voids.void_invoice(engine, second["number"], reason="late", actor="t", razorpay_client=rzp)
    assert rows(engine, "SELECT status FROM billing.invoices WHERE invoice_id = :i",
                i=second["invoice_id"]) == [{"status": "finalized"}]  # fmt: skip
