"""Webhook receiving over real loopback HTTP: verified events stored once, everything else 400 and counted."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
from test_payments_support import RZP_WEBHOOK_SECRET, STRIPE_PREVIOUS, STRIPE_SECRET, inbox, webhook_app

from billing_pipeline.fakes import razorpay_fake, stripe_fake
from billing_pipeline.fakes.server import serve_in_thread

pytest_plugins = ["test_payments_support"]  # fixtures: providers, receiver
pytestmark = pytest.mark.slow


def _stripe_event(state, amount=5000):
    charge = state.add_charge(amount, "usd", customer="cus_1", metadata={"invoice_id": "7"})
    return state.add_event("charge.succeeded", charge)


def _post_stripe(url, body: bytes, header: str | None):
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers)


def test_a_signed_stripe_event_is_stored_once_and_redeliveries_are_no_ops(receiver, providers):
    url, app = receiver
    stripe_state, _ = providers
    event = _stripe_event(stripe_state)

    first = stripe_fake.deliver_webhook(f"{url}/webhooks/stripe", event, STRIPE_SECRET)
    again = stripe_fake.deliver_webhook(f"{url}/webhooks/stripe", event, STRIPE_SECRET)

    assert (first.status_code, first.json()) == (200, {"received": True, "duplicate": False})
    assert (again.status_code, again.json()) == (200, {"received": True, "duplicate": True})
    [row] = inbox(app.state.payment_webhooks.engine)
    assert (row["provider"], row["event_id"], row["event_type"]) == (
        "stripe",
        event["id"],
        "charge.succeeded",
    )
    assert row["payload"] == event and json.loads(bytes(row["raw_body"])) == event
    assert (row["processed_at"], row["attempts"]) == (None, 0)
    assert sum(app.state.webhook_rejections.values()) == 0


def test_forged_stale_altered_and_unsigned_stripe_requests_are_rejected_counted_and_never_stored(
    receiver, providers, caplog
):
    url, app = receiver
    event = _stripe_event(providers[0])
    body = json.dumps(event, separators=(",", ":")).encode()
    now = int(time.time())
    altered = body.replace(b"5000", b"1")
    cases = {
        "forged": (body, stripe_fake.stripe_signature_header(body, "whsec_attacker_guess")),
        "stale": (body, stripe_fake.stripe_signature_header(body, STRIPE_SECRET, timestamp=now - 301)),
        "altered": (altered, stripe_fake.stripe_signature_header(body, STRIPE_SECRET)),
        "unsigned": (body, None),
        "garbled": (body, "v1=abc"),
        "not_utf8": (
            b"\xff\xfe" + body,
            stripe_fake.stripe_signature_header(b"\xff\xfe" + body, STRIPE_SECRET),
        ),
    }
    assert altered != body

    with caplog.at_level(logging.WARNING, logger="billing_pipeline.payments.webhooks"):
        answers = {name: _post_stripe(url, *case) for name, case in cases.items()}

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(cases, 400)
    assert {name: r.json()["error"] for name, r in answers.items()} == {
        "forged": "bad_signature",
        "stale": "stale_timestamp",
        "altered": "bad_signature",
        "unsigned": "missing_signature",
        "garbled": "bad_signature",
        "not_utf8": "bad_body",
    }
    assert inbox(app.state.payment_webhooks.engine) == []
    assert dict(app.state.webhook_rejections) == {
        ("stripe", "bad_signature"): 3,
        ("stripe", "stale_timestamp"): 1,
        ("stripe", "missing_signature"): 1,
        ("stripe", "bad_body"): 1,
    }
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged.count("stripe webhook rejected") == 6
    assert STRIPE_SECRET not in logged and "whsec_attacker_guess" not in logged and "v1=" not in logged


def test_a_timestamp_inside_the_tolerance_is_accepted(receiver, providers):
    url, _ = receiver
    event = _stripe_event(providers[0])
    answer = stripe_fake.deliver_webhook(
        f"{url}/webhooks/stripe", event, STRIPE_SECRET, timestamp=int(time.time()) - 290
    )
    assert answer.status_code == 200


def test_during_a_secret_roll_either_secret_verifies(providers, monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET_PREVIOUS", STRIPE_PREVIOUS)
    app = webhook_app()
    state = providers[0]
    with serve_in_thread(app) as url:
        hook = f"{url}/webhooks/stripe"
        both = stripe_fake.deliver_webhook(
            hook, _stripe_event(state), STRIPE_PREVIOUS, extra_secrets=[STRIPE_SECRET]
        )
        old_only = stripe_fake.deliver_webhook(hook, _stripe_event(state), STRIPE_PREVIOUS)
        new_only = stripe_fake.deliver_webhook(hook, _stripe_event(state), STRIPE_SECRET)
        neither = stripe_fake.deliver_webhook(hook, _stripe_event(state), "whsec_retired_long_ago")
    assert [r.status_code for r in (both, old_only, new_only, neither)] == [200, 200, 200, 400]
    assert len(inbox(app.state.payment_webhooks.engine)) == 3


def test_razorpay_events_are_verified_over_the_raw_body_and_deduplicated_on_the_event_id_header(
    receiver, providers
):
    url, app = receiver
    _, rzp = providers
    payment = rzp.add_payment(49900, notes={"invoice_id": "9"})
    event = razorpay_fake.webhook_event("payment.captured", payment=payment)
    hook = f"{url}/webhooks/razorpay"
    body = json.dumps(event).encode()

    ok = razorpay_fake.deliver_webhook(hook, event, RZP_WEBHOOK_SECRET, event_id="evt_rzp_1")
    again = razorpay_fake.deliver_webhook(hook, event, RZP_WEBHOOK_SECRET, event_id="evt_rzp_1")
    forged = razorpay_fake.deliver_webhook(hook, event, "not_the_secret", event_id="evt_rzp_2")
    altered = httpx.post(
        hook,
        content=body.replace(b"49900", b"100"),
        headers={
            "X-Razorpay-Signature": razorpay_fake.razorpay_signature(body, RZP_WEBHOOK_SECRET),
            "x-razorpay-event-id": "evt_rzp_3",
        },
    )
    unsigned = httpx.post(hook, content=body, headers={"x-razorpay-event-id": "evt_rzp_4"})
    # a re-serialized body (what a JSON-parsing proxy sends) no longer matches its signature
    reparsed = httpx.post(
        hook,
        content=json.dumps(event, indent=2).encode(),
        headers={
            "X-Razorpay-Signature": razorpay_fake.razorpay_signature(
                json.dumps(event).encode(), RZP_WEBHOOK_SECRET
            )
        },
    )

    assert [r.status_code for r in (ok, again, forged, altered, unsigned, reparsed)] == [
        200,
        200,
        400,
        400,
        400,
        400,
    ]
    assert again.json()["duplicate"] is True
    [row] = inbox(app.state.payment_webhooks.engine)
    assert (row["provider"], row["event_id"], row["event_type"]) == (
        "razorpay",
        "evt_rzp_1",
        "payment.captured",
    )
    assert dict(app.state.webhook_rejections) == {
        ("razorpay", "bad_signature"): 3,
        ("razorpay", "missing_signature"): 1,
    }


def test_without_a_configured_secret_the_receiver_answers_503_so_the_provider_retries(providers, monkeypatch):
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    app = webhook_app()
    with serve_in_thread(app) as url:
        answer = stripe_fake.deliver_webhook(
            f"{url}/webhooks/stripe", _stripe_event(providers[0]), STRIPE_SECRET
        )
    assert answer.status_code == 503
    assert inbox(app.state.payment_webhooks.engine) == []
