"""Ingest API keys: hashed storage, 401 for every bad key, revocation, rotation's grace window, CLI."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from billing_pipeline.api import create_app, keys
from billing_pipeline.api.cli import keys_app

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture()
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture()
def client(settings, clock):
    app = create_app(settings)
    app.state.clock = clock
    with TestClient(app) as client:
        yield client


@pytest.fixture()
def conn(settings):
    with closing(keys.connect(settings.edge_path)) as conn:
        yield conn


def post(client: TestClient, token: str | None, event_id: str = "e-1"):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    event = {"event_id": event_id, "metric": "api_calls", "quantity": "1",
             "occurred_at": "2025-03-01T11:00:00Z"}
    return client.post("/v1/events", json=event, headers=headers)


def stored_projects(settings) -> dict[str, str]:
    with closing(sqlite3.connect(settings.edge_path)) as db:
        return dict(db.execute("SELECT event_id, project_id FROM events"))


def test_key_is_stored_only_as_a_hash(settings, conn):
    issued = keys.create_key(conn, "org-1", "proj-1", "ci", now=T0)
    prefix = f"bp_live_{issued.key.key_id}_"
    assert issued.token.startswith(prefix)
    assert issued.token not in repr(issued)
    # the whole secret: token_urlsafe may itself hold '_', so the part after the last one may be a
    # single character found in the file by chance
    secret = issued.token.removeprefix(prefix)

    row = conn.execute("SELECT * FROM api_keys WHERE key_id = ?", (issued.key.key_id,)).fetchone()
    assert row["secret_hash"] == hashlib.sha256(issued.token.encode()).hexdigest()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = [settings.edge_path, *settings.edge_path.parent.glob(settings.edge_path.name + "-*")]
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data and issued.token.encode() not in data

    assert keys.verify_key(conn, issued.token, T0) == issued.key
    assert keys.verify_key(conn, issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B"), T0) is None


def test_hashes_are_compared_in_constant_time(conn, monkeypatch):
    issued = keys.create_key(conn, "org-1", "proj-1", now=T0)
    calls = []
    real = keys.hmac.compare_digest
    monkeypatch.setattr(keys.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))

    wrong = f"bp_live_{issued.key.key_id}_{'x' * 43}"
    unknown = f"bp_live_{'0' * 16}_{'x' * 43}"
    assert keys.verify_key(conn, wrong, T0) is None
    assert keys.verify_key(conn, unknown, T0) is None
    assert keys.verify_key(conn, issued.token, T0) is not None
    assert len(calls) == 3  # also for an unknown key id (against a dummy hash)


def test_401_for_every_bad_key_with_the_same_answer(settings, conn, client):
    good = keys.create_key(conn, "org-1", "proj-1", now=T0)
    revoked = keys.create_key(conn, "org-1", "proj-1", now=T0)
    assert keys.revoke_key(conn, revoked.key.key_id, now=T0) is True
    key_id, secret = good.token.removeprefix("bp_live_").split("_", 1)
    other_secret = ("B" if secret[0] == "A" else "A") + secret[1:]

    bad = {
        "missing": None,
        "empty": "",
        "garbage": "hello",
        "wrong secret": f"bp_live_{key_id}_{other_secret}",
        "unknown key id": f"bp_live_{'f' * 16}_{secret}",
        "revoked": revoked.token,
    }
    answers = set()
    for i, (reason, token) in enumerate(bad.items()):
        response = post(client, token, f"bad-{i}")
        assert response.status_code == 401, reason
        assert response.headers["WWW-Authenticate"] == "Bearer"
        answers.add(response.text)
    basic = client.post("/v1/events", json={}, headers={"Authorization": f"Basic {good.token}"})
    assert basic.status_code == 401
    answers.add(basic.text)
    assert answers == {'{"detail":"invalid or missing API key"}'}
    assert stored_projects(settings) == {}

    assert post(client, good.token, "good").status_code == 202
    assert stored_projects(settings) == {"good": "proj-1"}


def test_rotation_keeps_the_old_key_valid_for_the_grace_window(settings, conn, client, clock):
    old = keys.create_key(conn, "org-1", "proj-1", "backend", now=T0)
    clock.advance(seconds=10)
    new = keys.rotate_key(conn, old.key.key_id, grace_seconds=3600, now=clock())
    assert (new.key.organisation_id, new.key.project_id, new.key.name) == ("org-1", "proj-1", "backend")
    assert new.token != old.token

    clock.advance(seconds=3599)
    assert post(client, old.token, "inside-grace").status_code == 202
    assert post(client, new.token, "new-1").status_code == 202
    clock.advance(seconds=1)  # exactly at expires_at: over
    assert post(client, old.token, "after-grace").status_code == 401
    assert post(client, new.token, "new-2").status_code == 202
    assert stored_projects(settings) == {"inside-grace": "proj-1", "new-1": "proj-1", "new-2": "proj-1"}

    listed = {key.key_id: key for key in keys.list_keys(conn)}
    assert listed[old.key.key_id].state(clock()) == "expired"
    assert listed[old.key.key_id].replaced_by == new.key.key_id
    assert listed[new.key.key_id].state(clock()) == "active"


def test_revocation_ends_a_key_inside_its_grace_window(conn, client, clock):
    old = keys.create_key(conn, "org-1", "proj-1", now=T0)
    keys.rotate_key(conn, old.key.key_id, grace_seconds=86400, now=T0)
    assert post(client, old.token, "a").status_code == 202
    assert keys.revoke_key(conn, old.key.key_id, now=T0) is True
    assert keys.revoke_key(conn, old.key.key_id, now=T0) is False
    assert post(client, old.token, "b").status_code == 401


def test_rotation_refusals(conn):
    key = keys.create_key(conn, "org-1", "proj-1", now=T0)
    with pytest.raises(ValueError, match="negative"):
        keys.rotate_key(conn, key.key.key_id, grace_seconds=-1, now=T0)
    with pytest.raises(KeyError):
        keys.rotate_key(conn, "0" * 16, grace_seconds=60, now=T0)
    new = keys.rotate_key(conn, key.key.key_id, grace_seconds=60, now=T0)
    with pytest.raises(ValueError, match="already rotated"):
        keys.rotate_key(conn, key.key.key_id, grace_seconds=60, now=T0)
    keys.revoke_key(conn, new.key.key_id, now=T0)
    with pytest.raises(ValueError, match="revoked"):
        keys.rotate_key(conn, new.key.key_id, grace_seconds=60, now=T0)
    with pytest.raises(KeyError):
        keys.revoke_key(conn, "0" * 16)


def test_cli_create_list_rotate_revoke(settings, conn):
    runner = CliRunner()
    created = runner.invoke(keys_app, ["create", "--org", "org-9", "--project", "proj-9", "--name", "web"])
    assert created.exit_code == 0, created.output
    token = next(line.split()[-1] for line in created.output.splitlines() if line.startswith("API key:"))
    key = keys.verify_key(conn, token)
    assert key is not None and (key.organisation_id, key.project_id, key.name) == ("org-9", "proj-9", "web")

    listed = runner.invoke(keys_app, ["list"])
    assert listed.exit_code == 0 and key.key_id in listed.output and "active" in listed.output
    secret = token.removeprefix(f"{keys.PREFIX}{key.key_id}_")  # token_urlsafe: may itself hold "_"
    assert len(secret) >= 40 and secret not in listed.output
    assert conn.execute("SELECT secret_hash FROM api_keys").fetchone()[0] not in listed.output

    rotated = runner.invoke(keys_app, ["rotate", key.key_id, "--grace-seconds", "60"])
    assert rotated.exit_code == 0, rotated.output
    new_token = next(line.split()[-1] for line in rotated.output.splitlines() if line.startswith("API key:"))
    assert new_token != token and keys.verify_key(conn, new_token) is not None
    expires = datetime.strptime(keys.list_keys(conn)[0].expires_at, "%Y-%m-%dT%H:%M:%S.%fZ")
    expected = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=60)
    assert abs((expires - expected).total_seconds()) < 30
    assert keys.verify_key(conn, token) is not None  # still inside the grace window

    assert runner.invoke(keys_app, ["revoke", key.key_id]).exit_code == 0
    assert keys.verify_key(conn, token) is None
    assert runner.invoke(keys_app, ["revoke", "0" * 16]).exit_code == 1
    assert runner.invoke(keys_app, ["rotate", key.key_id]).exit_code == 1  # revoked, already rotated
