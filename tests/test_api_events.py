"""POST /v1/events and GET /healthz against a real edge SQLite and the test's real PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from billing_pipeline import edge_store
from billing_pipeline.api import create_app, keys
from billing_pipeline.api.config import load_api_config
from billing_pipeline.api.ratelimit import RateLimiter
from billing_pipeline.settings import SettingsError, load_settings

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


class Clock:
    def __init__(self, start):
        self.now = start

    def __call__(self):
        return self.now


@pytest.fixture()
def make_client(settings):
    clients = []

    def make(settings=settings):
        app = create_app(settings)
        app.state.clock = Clock(T0)
        client = TestClient(app)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture()
def client(make_client):
    return make_client()


def new_key(settings, org="org-1", project="proj-1") -> dict:
    with closing(keys.connect(settings.edge_path)) as conn:
        return {"Authorization": f"Bearer {keys.create_key(conn, org, project).token}"}


@pytest.fixture()
def auth(settings) -> dict:
    return new_key(settings)


def event(event_id="e-1", **fields) -> dict:
    return {"event_id": event_id, "metric": "api_calls", "quantity": "1",
            "occurred_at": "2025-03-01T11:00:00Z", **fields}


def post_raw(client, auth, text: str):
    headers = {**auth, "Content-Type": "application/json"}
    return client.post("/v1/events", content=text.encode(), headers=headers)


def rows(settings) -> dict[str, dict]:
    with closing(sqlite3.connect(settings.edge_path)) as db:
        db.row_factory = sqlite3.Row
        return {row["event_id"]: dict(row) for row in db.execute("SELECT * FROM events")}


def test_an_event_lands_in_the_edge_store(settings, client, auth):
    body = event("evt-1", quantity="2.50", occurred_at="2025-03-01T17:30:00+05:30",
                 properties={"region": "eu", "n": [1, 2.5]}, project_id="proj-1")
    response = client.post("/v1/events", json=body, headers=auth)
    assert response.status_code == 202, response.text
    assert response.json() == {"event_id": "evt-1", "status": "accepted"}

    stored = rows(settings)["evt-1"]
    assert stored == {
        "event_id": "evt-1", "organisation_id": "org-1", "project_id": "proj-1", "metric": "api_calls",
        "quantity": "2.50", "occurred_at": "2025-03-01T12:00:00.000000Z",
        "received_at": "2025-03-01T12:00:00.123456Z", "properties": '{"region":"eu","n":[1,2.5]}',
        "processed_at": None,
    }
    assert stored["received_at"] == edge_store.utc_text(T0)  # the API's clock, in UTC


def test_received_at_is_utc_even_when_the_clock_is_not(settings, client, auth):
    india = timezone(timedelta(hours=5, minutes=30))
    client.app.state.clock = Clock(datetime(2025, 3, 1, 17, 30, tzinfo=india))
    assert client.post("/v1/events", json=event("e-tz"), headers=auth).status_code == 202
    assert rows(settings)["e-tz"]["received_at"] == "2025-03-01T12:00:00.000000Z"


@pytest.mark.parametrize("raw, stored", [
    ("0.1", "0.1"),
    ("12345678901234567890.123456789012", "12345678901234567890.123456789012"),  # a float keeps ~17 digits
    ("1e3", "1000"),
    ("2.5E-3", "0.0025"),
    ("7", "7"),
    ("-3.5", "-3.5"),
    ("1.000000000000000000", "1.000000000000000000"),  # trailing zeros are not extra places
    ('"0.30000000000000000001"', None),  # 20 places: refused below, not rounded
    ('"12.5"', "12.5"),
])
def test_quantity_is_parsed_exactly(settings, client, auth, raw, stored):
    text = '{"event_id": "q", "metric": "m", "occurred_at": "2025-03-01T00:00:00Z", "quantity": %s}' % raw
    response = post_raw(client, auth, text)
    if stored is None:
        assert response.status_code == 422
        assert rows(settings) == {}
    else:
        assert response.status_code == 202, response.text
        assert rows(settings)["q"]["quantity"] == stored


def test_numbers_in_properties_are_kept_exactly(settings, client, auth):
    text = ('{"event_id": "p", "metric": "m", "quantity": 1, "occurred_at": "2025-03-01T00:00:00Z",'
            ' "properties": {"amount": 0.30000000000000000001, "big": 123456789012345678901234567890,'
            ' "text": "caf\\u00e9 \\"q\\"", "ok": true, "none": null}}')
    assert post_raw(client, auth, text).status_code == 202
    stored = rows(settings)["p"]["properties"]
    assert '"amount":0.30000000000000000001' in stored
    assert '"big":123456789012345678901234567890' in stored
    assert json.loads(stored)["text"] == 'café "q"'
    assert json.loads(stored)["ok"] is True and json.loads(stored)["none"] is None


BAD = [
    ("quantity", {"quantity": "abc"}),
    ("quantity", {"quantity": "NaN"}),
    ("quantity", {"quantity": "Infinity"}),
    ("quantity", {"quantity": "1_000"}),
    ("quantity", {"quantity": " 1"}),
    ("quantity", {"quantity": ""}),
    ("quantity", {"quantity": True}),
    ("quantity", {"quantity": None}),
    ("quantity", {"quantity": [1]}),
    ("quantity", {"quantity": "1.0000000000001"}),  # 13 decimal places
    ("quantity", {"quantity": "1e26"}),  # 27 digits before the point
    ("occurred_at", {"occurred_at": "2025-03-01T12:00:00"}),  # naive
    ("occurred_at", {"occurred_at": "2025-03-01"}),  # a date, no time, no offset
    ("occurred_at", {"occurred_at": "2025-02-30T12:00:00Z"}),
    ("occurred_at", {"occurred_at": "yesterday"}),
    ("occurred_at", {"occurred_at": "1740830400"}),
    ("occurred_at", {"occurred_at": 1740830400}),
    ("occurred_at", {"occurred_at": "0001-01-01T00:00:00+05:00"}),  # before year 1 in UTC
    ("properties", {"properties": [1, 2]}),
    ("properties", {"properties": "a=b"}),
    ("properties", {"properties": {"blob": "x" * 20000}}),
    ("event_id", {"event_id": "x" * 201}),
    ("event_id", {"event_id": ""}),
    ("event_id", {"event_id": 123}),
    ("metric", {"metric": None}),
    ("metric", {"metric": "m" * 201}),
    ("project_id", {"project_id": "someone-elses"}),
    ("organisation_id", {"organisation_id": "org-2"}),  # comes from the key, never from the body
]


@pytest.mark.parametrize("field, change", BAD, ids=[f"{f}={str(c[f])[:30]}" for f, c in BAD])
def test_each_bad_field_is_named(settings, client, auth, field, change):
    response = client.post("/v1/events", json={**event("bad"), **change}, headers=auth)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]
    assert rows(settings) == {}


@pytest.mark.parametrize("missing", ["event_id", "metric", "quantity", "occurred_at"])
def test_a_missing_field_is_named(settings, client, auth, missing):
    body = event("m-1")
    del body[missing]
    response = client.post("/v1/events", json=body, headers=auth)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "missing", "loc": ["body", missing], "msg": "Field required"}]


def test_every_bad_field_of_one_event_is_named(client, auth):
    body = {"event_id": "x", "quantity": "1.2.3", "occurred_at": "2025-01-01T00:00"}
    response = client.post("/v1/events", json=body, headers=auth)
    assert response.status_code == 422
    assert sorted(e["loc"][1] for e in response.json()["detail"]) == ["metric", "occurred_at", "quantity"]


@pytest.mark.parametrize("text, loc", [
    ("not json", ["body"]),
    ('{"event_id": "e", "quantity": NaN}', ["body"]),
    ("[]", ["body"]),
    ('"an event"', ["body"]),
    ('{"events": []}', ["body", "events"]),
    ('{"events": {"event_id": "e"}}', ["body", "events"]),
    ('{"events": [], "extra": 1}', ["body", "extra"]),
])
def test_malformed_bodies(settings, client, auth, text, loc):
    response = post_raw(client, auth, text)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
    assert rows(settings) == {}


def test_a_repeated_event_is_a_duplicate_and_changes_nothing(settings, client, auth):
    assert client.post("/v1/events", json=event("dup", quantity="5"), headers=auth).status_code == 202
    before = rows(settings)
    client.app.state.clock = Clock(T0 + timedelta(hours=1))
    again = client.post("/v1/events", json=event("dup", quantity="9"), headers=auth)
    assert again.status_code == 200
    assert again.json() == {"event_id": "dup", "status": "duplicate"}
    assert rows(settings) == before  # first payload and received_at kept


def test_duplicates_within_and_between_batches(settings, client, auth):
    first = client.post("/v1/events", json={"events": [event("a"), event("b"), event("a", quantity="2")]},
                        headers=auth)
    assert first.status_code == 200
    assert [(r["index"], r["event_id"], r["status"]) for r in first.json()["results"]] == [
        (0, "a", "accepted"), (1, "b", "accepted"), (2, "a", "duplicate")]
    assert (first.json()["accepted"], first.json()["duplicate"], first.json()["rejected"]) == (2, 1, 0)

    second = client.post("/v1/events", json={"events": [event("b"), event("c")]}, headers=auth)
    assert second.status_code == 200
    assert [r["status"] for r in second.json()["results"]] == ["duplicate", "accepted"]
    stored = rows(settings)
    assert sorted(stored) == ["a", "b", "c"] and stored["a"]["quantity"] == "1"


def test_a_batch_reports_each_event_and_stores_the_valid_ones(settings, client, auth):
    batch = [event("ok-1"), event("bad-1", quantity="x"), {"nope": 1}, event("ok-2")]
    response = client.post("/v1/events", json={"events": batch}, headers=auth)
    assert response.status_code == 207
    body = response.json()
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 0, 2)
    results = body["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "accepted"]
    assert results[1]["event_id"] == "bad-1"
    assert [e["loc"] for e in results[1]["errors"]] == [["body", "events", 1, "quantity"]]
    assert results[2]["event_id"] is None
    assert {tuple(e["loc"]) for e in results[2]["errors"]} >= {("body", "events", 2, "event_id"),
                                                                ("body", "events", 2, "nope")}
    assert "errors" not in results[0]
    assert sorted(rows(settings)) == ["ok-1", "ok-2"]

    all_bad = client.post("/v1/events", json={"events": [event("z", quantity="x"), 5]}, headers=auth)
    assert all_bad.status_code == 422
    assert [r["status"] for r in all_bad.json()["results"]] == ["rejected", "rejected"]
    assert sorted(rows(settings)) == ["ok-1", "ok-2"]


def test_the_batch_limit(settings, client, auth):
    too_many = {"events": [event(f"x-{i}") for i in range(1001)]}
    response = client.post("/v1/events", json=too_many, headers=auth)
    assert response.status_code == 413
    assert "at most 1000 events" in response.json()["detail"][0]["msg"]
    assert rows(settings) == {}

    full = client.post("/v1/events", json={"events": too_many["events"][:1000]}, headers=auth)
    assert full.status_code == 200 and full.json()["accepted"] == 1000
    assert len(rows(settings)) == 1000


def test_a_body_over_the_size_limit_is_refused(settings, client, auth):
    response = post_raw(client, auth, json.dumps(event("big", properties={"p": "x" * (6 * 1024 * 1024)})))
    assert response.status_code == 413
    assert rows(settings) == {}


def test_an_event_id_of_another_project_is_refused(settings, client, auth):
    other = new_key(settings, "org-2", "proj-2")
    assert client.post("/v1/events", json=event("shared"), headers=auth).status_code == 202
    single = client.post("/v1/events", json=event("shared"), headers=other)
    assert single.status_code == 409
    assert single.json()["detail"][0]["type"] == "event_id_conflict"
    batch = client.post("/v1/events", json={"events": [event("shared"), event("mine")]}, headers=other)
    assert batch.status_code == 207
    assert batch.json()["results"][0]["errors"][0]["loc"] == ["body", "events", 0, "event_id"]
    stored = rows(settings)
    assert stored["shared"]["project_id"] == "proj-1" and stored["mine"]["project_id"] == "proj-2"


def test_the_rate_limit_is_per_key_with_retry_after(settings, monkeypatch, make_client, auth):
    monkeypatch.setenv("BILLING_API_RATE_LIMIT", "2/minute")
    client = make_client()
    ticks = Clock(1000.0)
    client.app.state.events_rate_limiter.clock = ticks
    other = new_key(settings, "org-1", "proj-1")

    assert client.post("/v1/events", json=event("r-1"), headers=auth).status_code == 202
    assert client.post("/v1/events", json=event("r-2"), headers=auth).status_code == 202
    limited = client.post("/v1/events", json=event("r-3"), headers=auth)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "30"  # 2 per 60 s: one token back every 30 s
    assert "r-3" not in rows(settings)
    assert client.post("/v1/events", json=event("o-1"), headers=other).status_code == 202

    ticks.now += 29.5
    retry = client.post("/v1/events", json=event("r-3"), headers=auth)
    assert retry.status_code == 429 and retry.headers["Retry-After"] == "1"
    ticks.now += 0.5  # exactly the 30 s the first answer asked for
    assert client.post("/v1/events", json=event("r-3"), headers=auth).status_code == 202
    assert {"r-1", "r-2", "r-3", "o-1"} == set(rows(settings))


def test_a_bad_rate_limit_setting_is_named(monkeypatch):
    monkeypatch.setenv("BILLING_API_RATE_LIMIT", "lots")
    with pytest.raises(SettingsError, match="BILLING_API_RATE_LIMIT"):
        load_api_config()


def test_cors_is_closed_unless_origins_are_configured(monkeypatch, make_client):
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    closed = make_client().options("/v1/events", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers

    monkeypatch.setenv("BILLING_API_CORS_ORIGINS", "https://app.example.com, https://admin.example.com")
    client = make_client()
    opened = client.options("/v1/events", headers=preflight)
    assert opened.status_code == 200
    assert opened.headers["access-control-allow-origin"] == "https://app.example.com"
    stranger = client.options("/v1/events", headers={**preflight, "Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in stranger.headers


def test_healthz_reports_edge_counts_and_the_warehouse(settings, client, auth):
    client.post("/v1/events", json={"events": [event("h-1"), event("h-2"), event("h-3")]}, headers=auth)
    with closing(sqlite3.connect(settings.edge_path)) as db, db:
        db.execute("UPDATE events SET processed_at = ? WHERE event_id = 'h-1'", (edge_store.now_text(),))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "edge_store": {"status": "ok", "pending": 2, "processed": 1},
                               "warehouse": {"status": "ok"}}


def test_healthz_is_503_when_the_warehouse_is_unreachable(monkeypatch, make_client):
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://billing:hunter2secret@127.0.0.1:1/nowhere")
    response = make_client(load_settings()).get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down" and body["edge_store"]["status"] == "ok"
    assert body["warehouse"]["status"] == "down"
    assert "hunter2secret" not in response.text and "127.0.0.1" not in response.text


def test_healthz_is_503_when_the_edge_store_cannot_open(monkeypatch, make_client, tmp_path):
    monkeypatch.setenv("BILLING_EDGE_PATH", str(tmp_path))  # a directory: SQLite cannot open it
    response = make_client(load_settings()).get("/healthz")
    assert response.status_code == 503
    assert response.json()["edge_store"]["status"] == "down"
    assert response.json()["warehouse"] == {"status": "ok"}


@pytest.mark.parametrize("limit, period", [(2, 60), (3, 7), (7, 3600), (13, 1)])
def test_waiting_the_advertised_time_always_gets_through(limit, period):
    ticks = Clock(0.0)
    limiter = RateLimiter(limit, period, clock=ticks)
    assert [limiter.hit("k") for _ in range(limit)] == [0.0] * limit
    assert limiter.hit("other") == 0.0  # buckets are per key
    for _ in range(10):
        wait = limiter.hit("k")
        assert wait > 0
        ticks.now += wait
        assert limiter.hit("k") == 0.0
