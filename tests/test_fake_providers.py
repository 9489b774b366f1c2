"""The real stripe and razorpay SDKs against the project's FAKE provider servers, over loopback HTTP."""

from __future__ import annotations

import json
import time

import pytest
import razorpay
import stripe
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from billing_pipeline.fakes import razorpay_fake, stripe_fake
from billing_pipeline.fakes.server import serve_in_thread
from billing_pipeline.providers import razorpay_api, stripe_api

pytestmark = pytest.mark.slow

T0 = 1_714_521_600  # 2024-05-01T00:00:00Z
DAY = 86_400
SK = "sk_test_fake_0123456789"
RZP_ID, RZP_SECRET = "rzp_test_fake", "fake_secret_0123"


@pytest.fixture
def fake_stripe():
    state = stripe_fake.FakeStripeState(api_key=SK)
    with serve_in_thread(stripe_fake.create_app(state)) as url:
        yield state, url


@pytest.fixture
def fake_razorpay():
    state = razorpay_fake.FakeRazorpayState(RZP_ID, RZP_SECRET)
    with serve_in_thread(razorpay_fake.create_app(state)) as url:
        yield state, url


def _receiver(verify):
    """A webhook endpoint that runs `verify(raw_body, headers)` and answers 200 with its result, else 400."""
    app, received = FastAPI(), []

    @app.post("/hook")
    async def hook(request: Request):
        raw = await request.body()
        received.append(raw)
        try:
            return JSONResponse({"ok": verify(raw, request.headers)})
        except Exception as exc:  # the SDK verifier's own exception
            return JSONResponse({"error": type(exc).__name__}, status_code=400)

    return app, received


# -- Stripe -------------------------------------------------------------------------------------------
def test_stripe_sdk_follows_three_pages_over_http_and_honors_the_window(fake_stripe):
    state, url = fake_stripe
    inside = {state.add_charge(1000 + i, created=T0 + i * 300)["id"] for i in range(250)}  # T0 .. T0+74700
    for ts in (T0 - 1, T0 + DAY, T0 + DAY + 60):
        state.add_charge(5, created=ts)

    rows = list(stripe_api.list_charges(stripe_api.make_client(SK, url), T0, T0 + DAY))

    assert len(rows) == 250
    assert {r["id"] for r in rows} == inside
    assert [r["created"] for r in rows] == sorted((r["created"] for r in rows), reverse=True)
    calls = state.requests_to("/v1/charges", "GET")
    assert len(calls) == 3
    for call in calls:
        assert call.auth_scheme == "Bearer"
        assert (call.params["limit"], call.params["created[gte]"], call.params["created[lt]"]) == (
            "100", str(T0), str(T0 + DAY))
    assert [c.params.get("starting_after") for c in calls] == [None, rows[99]["id"], rows[199]["id"]]


def test_stripe_refunds_and_balance_transactions_are_listed_and_linked(fake_stripe):
    state, url = fake_stripe
    charge = state.add_charge(5000, "USD", customer="cus_1", created=T0 + 10, fee=175,
                              metadata={"invoice_id": "inv_42"})
    refund = state.add_refund(charge["id"], 2000, created=T0 + 20)
    state.add_balance_transaction(-2000, type="refund", source=refund["id"], created=T0 + 20)
    client = stripe_api.make_client(SK, url + "/v1")  # a trailing /v1 in the setting is tolerated

    [ch] = stripe_api.list_charges(client, T0, T0 + DAY)
    [re] = stripe_api.list_refunds(client, T0, T0 + DAY)
    txns = {t["source"]: t for t in stripe_api.list_balance_transactions(client, T0, T0 + DAY)}

    assert (ch["amount"], ch["amount_refunded"], ch["refunded"], ch["currency"]) == (5000, 2000, False, "usd")
    assert ch["metadata"] == {"invoice_id": "inv_42"} and type(ch["metadata"]) is dict
    assert (re["charge"], re["amount"], re["status"]) == (charge["id"], 2000, "succeeded")
    assert (txns[charge["id"]]["fee"], txns[charge["id"]]["net"]) == (175, 4825)
    assert ch["balance_transaction"] == txns[charge["id"]]["id"]
    assert re["balance_transaction"] == txns[refund["id"]]["id"]
    assert txns[refund["id"]]["type"] == "refund"


def test_stripe_events_filter_and_backward_paging(fake_stripe):
    state, url = fake_stripe
    ids = [state.add_event("charge.succeeded" if i % 2 else "charge.failed", {"id": f"ch_{i}"},
                           created=T0 + i)["id"] for i in range(12)]
    client = stripe_api.make_client(SK, url)

    succeeded = client.v1.events.list(params={"type": "charge.succeeded", "limit": 100})
    assert [e.id for e in succeeded.data] == ids[11::-2]
    assert succeeded.data[0].data.object.id == "ch_11"
    older = client.v1.events.list(params={"limit": 3, "ending_before": ids[4]})  # the 3 just newer than #4
    assert [e.id for e in older.data] == [ids[7], ids[6], ids[5]] and older.has_more


def test_stripe_errors_surface_as_sdk_exceptions(fake_stripe):
    state, url = fake_stripe
    with pytest.raises(stripe.AuthenticationError) as auth:
        list(stripe_api.list_charges(stripe_api.make_client("sk_test_wrong", url), T0, T0 + DAY))
    assert auth.value.http_status == 401 and "Invalid API Key" in auth.value.user_message
    assert len(state.requests_to("/v1/charges")) == 1  # a 401 is not retried

    client = stripe_api.make_client(SK, url)
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.charges.retrieve("ch_nope")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError) as bad_limit:
        client.v1.charges.list(params={"limit": 101})
    assert (bad_limit.value.http_status, bad_limit.value.param) == (400, "limit")
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: colour"):
        client.v1.charges.list(params={"colour": "red"})


def test_stripe_sdk_retries_a_server_error(fake_stripe):
    state, url = fake_stripe
    state.add_charge(700, created=T0)
    state.fail_next(1, status=500)

    rows = list(stripe_api.list_charges(stripe_api.make_client(SK, url), T0, T0 + DAY))

    assert [r["amount"] for r in rows] == [700]
    calls = state.requests_to("/v1/charges")
    assert len(calls) == 2 and calls[0].params == calls[1].params


def test_stripe_payment_intent_create_is_idempotent(fake_stripe):
    state, url = fake_stripe
    client = stripe_api.make_client(SK, url)
    params = {"amount": 4200, "currency": "usd", "customer": "cus_9", "confirm": True,
              "metadata": {"invoice_id": "inv_7", "attempt": "2"}}

    first = client.v1.payment_intents.create(params=params, options={"idempotency_key": "dunning-inv_7-2"})
    again = client.v1.payment_intents.create(params=params, options={"idempotency_key": "dunning-inv_7-2"})

    assert again.id == first.id and first.status == "succeeded"
    assert first.metadata.to_dict() == {"invoice_id": "inv_7", "attempt": "2"}
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert [p["id"] for p in state.all("payment_intents")] == [first.id]
    assert [c["payment_intent"] for c in state.all("charges")] == [first.id]
    posts = state.requests_to("/v1/payment_intents", "POST")
    assert [p.idempotency_key for p in posts] == ["dunning-inv_7-2"] * 2
    assert posts[0].params["metadata[invoice_id]"] == "inv_7" and posts[0].params["confirm"] == "true"

    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(params={**params, "amount": 1},
                                         options={"idempotency_key": "dunning-inv_7-2"})
    other = client.v1.payment_intents.create(params=params)  # the SDK adds its own key to every POST
    assert other.id != first.id and len(state.all("payment_intents")) == 2
    last_post = state.requests_to("/v1/payment_intents", "POST")[-1]
    assert last_post.idempotency_key not in (None, "dunning-inv_7-2")


def test_stripe_declined_payment_intent_raises_card_error(fake_stripe):
    state, url = fake_stripe
    state.declined_customers.add("cus_broke")
    with pytest.raises(stripe.CardError) as declined:
        stripe_api.make_client(SK, url).v1.payment_intents.create(
            params={"amount": 900, "currency": "usd", "customer": "cus_broke", "confirm": True})
    assert (declined.value.http_status, declined.value.code) == (402, "card_declined")
    [pi] = state.all("payment_intents")
    assert pi["status"] == "requires_payment_method" and pi["last_payment_error"]["code"] == "card_declined"


def test_stripe_webhook_signature_verifies_with_the_sdk(fake_stripe):
    state, _ = fake_stripe
    secret, old_secret = "whsec_fake_current", "whsec_fake_previous"
    event = state.add_event("charge.succeeded", state.add_charge(1500, created=T0))
    body = json.dumps(event).encode()

    header = stripe_fake.stripe_signature_header(body, secret)
    assert stripe.Webhook.construct_event(body, header, secret, tolerance=300).id == event["id"]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.replace(b"1500", b"1501"), header, secret, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, header, old_secret, tolerance=300)
    stale = stripe_fake.stripe_signature_header(body, secret, timestamp=int(time.time()) - 301)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(body, stale, secret, tolerance=300)
    rolled = stripe_fake.stripe_signature_header(body, secret, extra_secrets=[old_secret])
    assert rolled.count(",v1=") == 2
    assert stripe.Webhook.construct_event(body, rolled, old_secret, tolerance=300).id == event["id"]

    app, received = _receiver(lambda raw, h: stripe.Webhook.construct_event(
        raw, h["stripe-signature"], secret, tolerance=300).id)
    with serve_in_thread(app) as hook_url:
        ok = stripe_fake.deliver_webhook(hook_url + "/hook", event, secret)
        forged = stripe_fake.deliver_webhook(hook_url + "/hook", event, "whsec_attacker")
    assert (ok.status_code, ok.json()) == (200, {"ok": event["id"]})
    assert (forged.status_code, forged.json()) == (400, {"error": "SignatureVerificationError"})
    assert json.loads(received[0]) == event


# -- Razorpay -----------------------------------------------------------------------------------------
def test_razorpay_sdk_offset_pages_over_http_and_honors_the_window(fake_razorpay):
    state, url = fake_razorpay
    inside = {state.add_payment(10_000 + i, created_at=T0 + i * 300)["id"] for i in range(250)}
    inside.add(state.add_payment(99, created_at=T0 + DAY - 1)["id"])  # last second of the day
    for ts in (T0 - 1, T0 + DAY):
        state.add_payment(5, created_at=ts)

    rows = list(razorpay_api.list_payments(razorpay_api.make_client(RZP_ID, RZP_SECRET, url), T0, T0 + DAY))

    assert len(rows) == 251 and {r["id"] for r in rows} == inside
    calls = state.requests_to("/v1/payments")
    assert [c.params for c in calls] == [
        {"from": str(T0), "to": str(T0 + DAY - 1), "count": "100", "skip": str(s)} for s in (0, 100, 200)]
    assert {c.auth_scheme for c in calls} == {"Basic"}
    assert rows[0]["currency"] == "INR" and rows[0]["status"] == "captured" and rows[0]["notes"] == {}


def test_razorpay_wire_format_bounds_inclusive_default_count_empty_notes(fake_razorpay):
    state, url = fake_razorpay
    for i in range(15):
        state.add_payment(100 + i, created_at=T0 + i)
    client = razorpay_api.make_client(RZP_ID, RZP_SECRET, url)

    page = client.payment.all({"from": T0 + 2, "to": T0 + 4})
    assert page["entity"] == "collection" and page["count"] == 3
    assert [p["created_at"] for p in page["items"]] == [T0 + 4, T0 + 3, T0 + 2]
    assert page["items"][0]["notes"] == []  # as Razorpay sends empty notes
    assert client.payment.all()["count"] == 10  # default count
    one = client.payment.fetch(page["items"][0]["id"])
    assert (one["entity"], one["amount"]) == ("payment", 104)


def test_razorpay_orders_refunds_settlements(fake_razorpay):
    state, url = fake_razorpay
    order = state.add_order(50_000, receipt="inv_42", notes={"invoice_id": "inv_42"}, created_at=T0 + 5)
    pay = state.add_payment(50_000, order_id=order["id"], notes={"invoice_id": "inv_42"}, created_at=T0 + 6)
    partial = state.add_payment(30_000, created_at=T0 + 7)
    state.add_refund(pay["id"], created_at=T0 + 8)
    state.add_refund(partial["id"], 1_000, created_at=T0 + 9)
    state.add_settlement(48_820, fees=1_000, tax=180, utr="UTR1", created_at=T0 + DAY + 10)  # next day
    client = razorpay_api.make_client(RZP_ID, RZP_SECRET, url)

    [o] = razorpay_api.list_orders(client, T0, T0 + DAY)
    payments = {p["id"]: p for p in razorpay_api.list_payments(client, T0, T0 + DAY)}
    refunds = list(razorpay_api.list_refunds(client, T0, T0 + DAY))

    assert (o["status"], o["amount_paid"], o["amount_due"]) == ("paid", 50_000, 0)
    assert o["notes"] == {"invoice_id": "inv_42"}
    assert (payments[pay["id"]]["status"], payments[pay["id"]]["refund_status"]) == ("refunded", "full")
    assert (payments[partial["id"]]["status"], payments[partial["id"]]["amount_refunded"]) == (
        "captured", 1_000)
    assert sorted((r["payment_id"], r["amount"]) for r in refunds) == sorted(
        [(pay["id"], 50_000), (partial["id"], 1_000)])
    assert list(razorpay_api.list_settlements(client, T0, T0 + DAY)) == []
    [s] = razorpay_api.list_settlements(client, T0 + DAY, T0 + 2 * DAY)
    assert (s["amount"], s["fees"], s["tax"], s["utr"]) == (48_820, 1_000, 180, "UTR1")


def test_razorpay_dedupes_when_a_new_payment_shifts_the_offsets(fake_razorpay):
    state, url = fake_razorpay
    before = {state.add_payment(100, created_at=T0 + i)["id"] for i in range(150)}
    client = razorpay_api.make_client(RZP_ID, RZP_SECRET, url)
    real_all, pages = client.payment.all, []

    def all_then_insert(params):
        pages.append(real_all(params))
        if len(pages) == 1:  # a payment arrives between our pages: everything shifts down by one
            state.add_payment(100, created_at=T0 + 500)
        return pages[-1]

    client.payment.all = all_then_insert
    rows = list(razorpay_api.list_payments(client, T0, T0 + DAY))

    raw_ids = [p["id"] for page in pages for p in page["items"]]
    assert len(raw_ids) == 151 and len(set(raw_ids)) == 150  # the wire did repeat one payment
    assert len(rows) == 150 and {r["id"] for r in rows} == before


def test_razorpay_errors_surface_as_sdk_exceptions(fake_razorpay):
    state, url = fake_razorpay
    with pytest.raises(razorpay.errors.BadRequestError, match="Authentication failed"):
        list(razorpay_api.list_payments(razorpay_api.make_client(RZP_ID, "wrong", url), T0, T0 + DAY))
    client = razorpay_api.make_client(RZP_ID, RZP_SECRET, url)
    with pytest.raises(razorpay.errors.BadRequestError, match="does not exist"):
        client.payment.fetch("pay_nope")
    with pytest.raises(razorpay.errors.BadRequestError, match="count may not be greater than 100"):
        client.payment.all({"count": 101})
    with pytest.raises(razorpay.errors.BadRequestError, match="must be an integer"):
        client.settlement.all({"from": "yesterday"})
    assert len(state.requests_to("/v1/payments")) == 2 and len(state.requests_to("/v1/settlements")) == 1


def test_razorpay_webhook_signature_verifies_with_the_sdk(fake_razorpay):
    state, _ = fake_razorpay
    secret = "rzp_webhook_fake_secret"
    event = razorpay_fake.webhook_event("payment.captured", payment=state.add_payment(25_000, created_at=T0))
    body = json.dumps(event).encode()
    sig = razorpay_fake.razorpay_signature(body, secret)
    utility = razorpay.Client(auth=(RZP_ID, RZP_SECRET)).utility

    assert utility.verify_webhook_signature(body.decode(), sig, secret) is True
    with pytest.raises(razorpay.errors.SignatureVerificationError):
        utility.verify_webhook_signature(body.decode().replace("25000", "25001"), sig, secret)
    with pytest.raises(razorpay.errors.SignatureVerificationError):
        utility.verify_webhook_signature(body.decode(), sig, "another_secret")

    def verify(raw, headers):
        utility.verify_webhook_signature(raw.decode(), headers["x-razorpay-signature"], secret)
        return headers["x-razorpay-event-id"]

    app, received = _receiver(verify)
    with serve_in_thread(app) as hook_url:
        ok = razorpay_fake.deliver_webhook(hook_url + "/hook", event, secret, "EvtFake000001")
        forged = razorpay_fake.deliver_webhook(hook_url + "/hook", event, "guessed", "EvtFake000002")
    assert (ok.status_code, ok.json()) == (200, {"ok": "EvtFake000001"})
    assert (forged.status_code, forged.json()) == (400, {"error": "SignatureVerificationError"})
    assert json.loads(received[0])["payload"]["payment"]["entity"]["amount"] == 25_000
