"""Vapi client against the FAKE Vapi server over real HTTP; cost parsing; webhook verification."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI, Request

from billing_pipeline.fakes.server import serve_in_thread
from billing_pipeline.fakes.vapi_fake import FakeVapiState, create_app, deliver_end_of_call, iso_ms
from billing_pipeline.providers.vapi_api import (
    VapiAuthError,
    VapiClient,
    VapiHTTPError,
    VapiWindowTooDenseError,
    normalize_call,
    parse_cost,
    verify_webhook,
)

KEY = "test-vapi-key-0123456789abcdef0123"
DAY = datetime(2024, 3, 1, tzinfo=UTC)
NEXT_DAY = DAY + timedelta(days=1)
MS = timedelta(milliseconds=1)
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def vapi():
    state = FakeVapiState()
    with serve_in_thread(create_app(state, KEY)) as base_url:
        yield state, base_url


def client(base_url: str, **kw) -> VapiClient:
    kw.setdefault("backoff_initial", 0.01)
    return VapiClient(KEY, base_url=base_url, **kw)


def call_requests(state: FakeVapiState) -> list[tuple[str, str]]:
    return [
        (r["query"]["createdAtGe"], r["query"]["createdAtLt"]) for r in state.requests if r["path"] == "/call"
    ]


def test_window_splitting_fetches_every_call_once(vapi):
    state, base_url = vapi
    added = {state.add_call(DAY + timedelta(seconds=300 * i + 7))["id"] for i in range(250)}
    state.add_call(DAY - MS)  # outside the window on both sides
    state.add_call(NEXT_DAY)
    with client(base_url, page_limit=100) as c:
        calls = c.list_calls(DAY, NEXT_DAY)
    ids = [call["id"] for call in calls]
    assert len(ids) == 250 and set(ids) == added
    created = [call["createdAt"] for call in calls]
    assert created == sorted(created)
    windows = call_requests(state)
    mid = iso_ms(DAY + timedelta(hours=12))
    assert windows[0] == (iso_ms(DAY), iso_ms(NEXT_DAY))
    assert (iso_ms(DAY), mid) in windows and (mid, iso_ms(NEXT_DAY)) in windows
    # 250 calls in pages of 100 need at least 3 leaf windows plus the full one(s) that were split.
    assert len(windows) >= 5
    assert all(r["query"]["limit"] == "100" for r in state.requests)


def test_window_that_cannot_be_split_raises(vapi):
    state, base_url = vapi
    for _ in range(5):
        state.add_call(DAY + timedelta(hours=3))  # five calls in the same millisecond
    with client(base_url, page_limit=5) as c, pytest.raises(VapiWindowTooDenseError, match="1 ms"):
        c.list_calls(DAY, NEXT_DAY)
    with client(base_url, page_limit=6) as c:
        assert len(c.list_calls(DAY, NEXT_DAY)) == 5


def test_empty_window_one_request(vapi):
    state, base_url = vapi
    state.add_call(NEXT_DAY + timedelta(hours=1))
    with client(base_url) as c:
        assert c.list_calls(DAY, NEXT_DAY) == []
    assert len(call_requests(state)) == 1


def test_one_row_window(vapi):
    state, base_url = vapi
    added = state.add_call(DAY + timedelta(hours=5), cost=0.42)
    with client(base_url) as c:
        calls = c.list_calls(DAY, NEXT_DAY)
    assert calls == [added]
    assert len(call_requests(state)) == 1


def test_boundaries_start_included_end_excluded(vapi):
    state, base_url = vapi
    at_start = state.add_call(DAY)["id"]
    before_end = state.add_call(NEXT_DAY - MS)["id"]
    state.add_call(NEXT_DAY)
    state.add_call(DAY - MS)
    with client(base_url, page_limit=2) as c:  # full page at first: the split must keep the bounds
        ids = [call["id"] for call in c.list_calls(DAY, NEXT_DAY)]
    assert ids == [at_start, before_end]


def test_sub_millisecond_bounds_round_to_vapi_precision(vapi):
    state, base_url = vapi
    kept = state.add_call(DAY + timedelta(seconds=1))["id"]
    state.add_call(DAY)  # created before start = DAY + 0.5 ms
    with client(base_url) as c:
        ids = [call["id"] for call in c.list_calls(DAY + timedelta(microseconds=500), NEXT_DAY)]
    assert ids == [kept]


def test_wrong_key_is_a_clear_auth_error(vapi):
    state, base_url = vapi
    state.add_call(DAY)
    with VapiClient("wrong-key", base_url=base_url) as c, pytest.raises(VapiAuthError) as err:
        c.list_calls(DAY, NEXT_DAY)
    assert err.value.status_code == 401
    assert "401" in str(err.value) and "VAPI_API_KEY" in str(err.value)
    assert "wrong-key" not in str(err.value)
    assert len(state.requests) == 1  # no retries on 401


def test_retries_429_and_5xx_then_succeeds(vapi):
    state, base_url = vapi
    state.add_call(DAY + timedelta(hours=1))
    state.inject_errors(429, 503)
    with client(base_url, max_attempts=3) as c:
        assert len(c.list_calls(DAY, NEXT_DAY)) == 1
    assert len(state.requests) == 3


def test_retries_are_bounded(vapi):
    state, base_url = vapi
    state.inject_errors(500, 500, 500, 500)
    with client(base_url, max_attempts=3) as c, pytest.raises(VapiHTTPError) as err:
        c.list_calls(DAY, NEXT_DAY)
    assert err.value.status_code == 500
    assert len(state.requests) == 3


def test_get_call_and_fake_shapes(vapi):
    state, base_url = vapi
    added = state.add_call(DAY + timedelta(milliseconds=1234), cost=0.1, assistant_id="a1")
    raw = httpx.get(f"{base_url}/call/{added['id']}", headers=AUTH)
    assert raw.status_code == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", raw.json()["createdAt"])
    assert raw.json()["createdAt"].endswith("01.234Z")
    assert '"cost":0.1,' in raw.text  # a JSON float, as Vapi sends it
    with client(base_url) as c:
        assert c.get_call(added["id"])["id"] == added["id"]
        with pytest.raises(VapiHTTPError) as err:
            c.get_call("nope")
    assert err.value.status_code == 404
    too_big = httpx.get(f"{base_url}/call", params={"limit": 1001}, headers=AUTH)
    assert too_big.status_code == 400


def test_fake_sorts_newest_first_and_applies_limit(vapi):
    state, base_url = vapi
    for i in range(5):
        state.add_call(DAY + timedelta(minutes=i))
    rows = httpx.get(f"{base_url}/call", params={"limit": 3}, headers=AUTH).json()
    assert [r["createdAt"] for r in rows] == [iso_ms(DAY + timedelta(minutes=i)) for i in (4, 3, 2)]


def test_parse_cost_is_exact():
    assert parse_cost(0.1) == Decimal("0.1")
    assert parse_cost(0.1) != Decimal(0.1)  # the float's binary expansion is not what Vapi meant
    assert str(parse_cost(0.1234)) == "0.1234"
    assert parse_cost(0.1) + parse_cost(0.2) == Decimal("0.3")
    assert parse_cost(None) == Decimal("0")
    assert parse_cost(3) == Decimal("3")
    assert parse_cost("0.05") == Decimal("0.05")
    for bad in (True, float("nan"), float("inf"), -0.01, "abc", [1]):
        with pytest.raises(ValueError):
            parse_cost(bad)


def test_normalize_call(vapi):
    state, _ = vapi
    raw = state.add_call(
        DAY + timedelta(hours=2), cost=0.1, duration_s=30, metadata={"organisation_id": "o1"}
    )
    n = normalize_call(raw)
    assert n["id"] == raw["id"] and n["org_id"] == state.org_id
    assert n["created_at"] == DAY + timedelta(hours=2) and n["created_at"].tzinfo is not None
    assert n["ended_at"] - n["started_at"] == timedelta(seconds=30)
    assert n["cost_usd"] == Decimal("0.1") and n["cost_known"] is True
    assert n["status"] == "ended" and n["ended_reason"] == "customer-ended-call"
    assert n["metadata"] == {"organisation_id": "o1"}
    live = normalize_call(state.add_call(DAY, status="in-progress", cost=None))
    assert live["ended_at"] is None and live["cost_usd"] == Decimal("0") and live["cost_known"] is False
    with pytest.raises(ValueError, match="createdAt"):
        normalize_call({"id": "x", "updatedAt": "2024-03-01T00:00:00.000Z"})


@pytest.fixture
def receiver():
    """A tiny ASGI endpoint that records what a webhook delivery looked like on the wire."""
    got: list[tuple[dict[str, str], bytes]] = []
    app = FastAPI()

    @app.post("/webhooks/vapi")
    async def hook(request: Request):
        got.append((dict(request.headers), await request.body()))
        return {"ok": True}

    with serve_in_thread(app) as base_url:
        yield f"{base_url}/webhooks/vapi", got


def test_webhook_secret_header(vapi, receiver):
    state, _ = vapi
    url, got = receiver
    call = state.add_call(DAY)
    assert deliver_end_of_call(url, call, secret="s3cret").status_code == 200
    headers, body = got[-1]
    assert b'"type": "end-of-call-report"' in body and call["id"].encode() in body
    assert verify_webhook(headers, body, secret="s3cret")
    assert not verify_webhook(headers, body, secret="s3cres")
    no_secret = {k: v for k, v in headers.items() if k != "x-vapi-secret"}
    assert not verify_webhook(no_secret, body, secret="s3cret")
    assert verify_webhook({"Authorization": "Bearer s3cret"}, body, secret="s3cret")
    assert not verify_webhook({"Authorization": "Bearer nope"}, body, secret="s3cret")
    assert not verify_webhook({"Authorization": "Basic s3cret"}, body, secret="s3cret")
    with pytest.raises(ValueError):
        verify_webhook(headers, body)


def test_webhook_hmac(vapi, receiver):
    state, _ = vapi
    url, got = receiver
    call = state.add_call(DAY)
    ts_ms = 1_709_251_200_000
    deliver_end_of_call(url, call, hmac_secret="hkey", timestamp_ms=ts_ms)
    headers, body = got[-1]
    assert "x-vapi-secret" not in headers
    now = ts_ms / 1000 + 10
    assert verify_webhook(headers, body, hmac_secret="hkey", now=now)
    assert verify_webhook(headers, body, hmac_secret="hkey", now=datetime.fromtimestamp(now, UTC))
    assert not verify_webhook(headers, body, hmac_secret="other", now=now)  # wrong key
    assert not verify_webhook(headers, body + b" ", hmac_secret="hkey", now=now)  # tampered body
    assert not verify_webhook(headers, body, hmac_secret="hkey", now=ts_ms / 1000 + 301)  # stale
    assert not verify_webhook(headers, body, hmac_secret="hkey", now=ts_ms / 1000 - 301)  # from the future
    no_sig = {k: v for k, v in headers.items() if k != "x-signature"}
    assert not verify_webhook(no_sig, body, hmac_secret="hkey", now=now)
    no_ts = {k: v for k, v in headers.items() if k != "x-timestamp"}
    assert not verify_webhook(no_ts, body, hmac_secret="hkey", now=now)
    # An attacker cannot reuse a signature with a fresh timestamp.
    replayed = {**headers, "x-timestamp": str(ts_ms + 5000)}
    assert not verify_webhook(replayed, body, hmac_secret="hkey", now=now)
    # A secret configured alongside HMAC does not make the HMAC-only delivery fail.
    assert verify_webhook(headers, body, secret="s", hmac_secret="hkey", now=now)
