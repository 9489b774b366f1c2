"""Ingest API keys: stored hashed in the edge store's SQLite (the API runs at the edge, next to it).

A key reads `bp_live_<key_id>_<secret>`: `key_id` (16 hex characters) is public and finds the row;
`secret` is 32 random bytes (256 bits, URL-safe base64). The table keeps only the SHA-256 of the
whole key text. A fast, unsalted hash is the standard choice for a random high-entropy token (as for
GitHub or Stripe keys): there is nothing to guess or precompute, so a slow password hash (bcrypt,
argon2) would only cost time on every request. Hashes are compared with `hmac.compare_digest`.

The plaintext key is returned once by `create_key`/`rotate_key` and never stored or logged.
Rotation makes a new key for the same project and lets the old one live until `expires_at`;
revocation ends a key at once, inside a grace window too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from billing_pipeline import edge_store

PREFIX = "bp_live_"
_TOKEN = re.compile(r"bp_live_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
  key_id          TEXT PRIMARY KEY,
  organisation_id TEXT NOT NULL,
  project_id      TEXT NOT NULL,
  name            TEXT,
  secret_hash     TEXT NOT NULL,     -- hex SHA-256 of the whole key text; never the key itself
  created_at      TEXT NOT NULL,     -- edge_store.utc_text format, so text order is time order
  expires_at      TEXT,              -- set by rotation: the old key is valid until then
  revoked_at      TEXT,
  replaced_by     TEXT               -- the key that rotation created in its place
);
"""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    organisation_id: str
    project_id: str
    name: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    replaced_by: str | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= edge_store.utc_text(now):
            return "expired"
        return "active"


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    token: str = field(repr=False)  # the plaintext: show it once, never store or log it


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def connect(path: Path | str) -> sqlite3.Connection:
    """The edge store, with the api_keys table created if missing."""
    conn = edge_store.connect(path)
    conn.executescript(SCHEMA)
    return conn


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _row(conn: sqlite3.Connection, key_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()


def _key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(**{name: row[name] for name in ApiKey.__dataclass_fields__})


def _insert(conn: sqlite3.Connection, organisation_id: str, project_id: str, name: str | None,
            now: datetime) -> IssuedKey:
    key_id = secrets.token_hex(8)
    token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    conn.execute(
        "INSERT INTO api_keys (key_id, organisation_id, project_id, name, secret_hash, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (key_id, organisation_id, project_id, name, _hash(token), edge_store.utc_text(now)),
    )
    return IssuedKey(_key(_row(conn, key_id)), token)


def create_key(conn: sqlite3.Connection, organisation_id: str, project_id: str,
               name: str | None = None, now: datetime | None = None) -> IssuedKey:
    if not organisation_id or not project_id:
        raise ValueError("a key needs an organisation and a project")
    with edge_store.transaction(conn):
        return _insert(conn, organisation_id, project_id, name, now or utc_now())


def revoke_key(conn: sqlite3.Connection, key_id: str, now: datetime | None = None) -> bool:
    """Revoke at once. False when it was already revoked; KeyError when there is no such key."""
    with edge_store.transaction(conn):
        if _row(conn, key_id) is None:
            raise KeyError(key_id)
        cursor = conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (edge_store.utc_text(now or utc_now()), key_id),
        )
        return cursor.rowcount == 1


def rotate_key(conn: sqlite3.Connection, key_id: str, grace_seconds: int,
               now: datetime | None = None) -> IssuedKey:
    """A new key for the same project; the old one stays valid for `grace_seconds` more."""
    if grace_seconds < 0:
        raise ValueError("the grace window cannot be negative")
    now = now or utc_now()
    with edge_store.transaction(conn):
        row = _row(conn, key_id)
        if row is None:
            raise KeyError(key_id)
        old = _key(row)
        if old.replaced_by is not None:
            raise ValueError(f"key {key_id} was already rotated to {old.replaced_by}; rotate that one")
        if old.state(now) != "active":
            raise ValueError(f"key {key_id} is {old.state(now)}; create a new key instead")
        issued = _insert(conn, old.organisation_id, old.project_id, old.name, now)
        conn.execute(
            "UPDATE api_keys SET expires_at = ?, replaced_by = ? WHERE key_id = ?",
            (edge_store.utc_text(now + timedelta(seconds=grace_seconds)), issued.key.key_id, key_id),
        )
        return issued


def list_keys(conn: sqlite3.Connection) -> list[ApiKey]:
    return [_key(row) for row in conn.execute("SELECT * FROM api_keys ORDER BY created_at, key_id")]


def verify_key(conn: sqlite3.Connection, token: str, now: datetime | None = None) -> ApiKey | None:
    """The active key that `token` is, or None (unknown, wrong secret, revoked, expired, malformed)."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    row = _row(conn, match[1])
    # The key id is public (it is the lookup); only the secret part needs a constant-time comparison.
    stored = row["secret_hash"] if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(_hash(token), stored) or row is None:
        return None
    key = _key(row)
    return key if key.state(now or utc_now()) == "active" else None


# --- FastAPI dependency ---------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="an ingest API key: `Authorization: Bearer bp_live_...`")


def _unauthorized() -> HTTPException:
    # The same answer for every reason (missing, malformed, unknown, wrong, revoked, expired).
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="invalid or missing API key",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> ApiKey:
    """The caller's active key, or 401. Reads `app.state.settings.edge_path` and `app.state.clock`."""
    if credentials is None:
        raise _unauthorized()
    state = request.app.state

    def verify() -> ApiKey | None:
        with closing(connect(state.settings.edge_path)) as conn:
            return verify_key(conn, credentials.credentials, state.clock())

    key = await run_in_threadpool(verify)
    if key is None:
        raise _unauthorized()
    return key
