"""FAKE Vapi REST server (tests and the demo only; never used when a real VAPI_API_KEY is configured).

Wire shapes followed, and where they come from:
- `GET /call`: bare JSON array (no cursor), filters createdAtGt/Lt/Ge/Le, updatedAtGt/Lt/Ge/Le, `limit`
  "maximum number of items to return, defaults to 100" -- Vapi API reference "List Calls"
  (docs.vapi.ai/api-reference/calls/list-calls, mirrored at vapi.mintlify.app). The max of 1000 is this
  project's PROVIDERS.md/brief; newest first is what the dashboard and API return.
- Call object: id, orgId, createdAt/updatedAt/startedAt/endedAt (ISO 8601, e.g. "2023-11-07T05:31:56Z";
  Vapi emits JS `toISOString()`, milliseconds + Z), status ("queued", "ringing", "in-progress",
  "forwarding", "ended"), endedReason, cost (USD number), costBreakdown {transport, stt, llm, tts, vapi,
  total, ...}, assistantId, metadata -- same List Calls page.
- Errors: Vapi is a NestJS app; 401 body {"message": "Unauthorized", "statusCode": 401}.
- end-of-call-report: {"message": {"type": "end-of-call-report", "endedReason", "cost", "timestamp"
  (ms since Unix epoch), "call": {...}}} -- Vapi OpenAPI `ServerMessageEndOfCallReport`
  (docs.rs vapi-client, models/server_message_end_of_call_report.rs).
- Webhook auth: `X-Vapi-Secret: <server secret>` (vapi4k ServerProperties.secret docs, docs.corsair.dev
  Vapi plugin); HMAC plan: `x-signature` = hex HMAC-SHA256 over "{timestamp}.{body}" with `x-timestamp`
  (Vapi schema HMACAuthenticationPlan, schemas.apis.io/schemas/vapi/vapi-hmacauthenticationplan).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_FILTERS = {
    "createdAtGt": ("createdAt", lambda v, b: v > b),
    "createdAtGe": ("createdAt", lambda v, b: v >= b),
    "createdAtLt": ("createdAt", lambda v, b: v < b),
    "createdAtLe": ("createdAt", lambda v, b: v <= b),
    "updatedAtGt": ("updatedAt", lambda v, b: v > b),
    "updatedAtGe": ("updatedAt", lambda v, b: v >= b),
    "updatedAtLt": ("updatedAt", lambda v, b: v < b),
    "updatedAtLe": ("updatedAt", lambda v, b: v <= b),
}


def iso_ms(dt: datetime) -> str:
    """`2024-05-01T12:00:00.123Z`, as JavaScript's toISOString() (Vapi's format)."""
    if dt.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _parse_iso(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


class FakeVapiState:
    """Thread-safe in-memory calls plus a log of every request the fake received."""

    def __init__(self, org_id: str | None = None) -> None:
        self.org_id = org_id or str(uuid.uuid4())
        self._lock = threading.Lock()
        self._calls: dict[str, dict[str, Any]] = {}
        self._log: list[dict[str, Any]] = []
        self._errors: deque[int] = deque()

    def add_call(
        self,
        created_at: datetime,
        *,
        cost: float | None = 0.1234,
        status: str = "ended",
        ended_reason: str | None = "customer-ended-call",
        duration_s: float = 60.0,
        call_id: str | None = None,
        org_id: str | None = None,
        assistant_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        updated_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Store a call shaped like Vapi's and return a copy (timestamps kept to the millisecond)."""
        started = created_at + timedelta(seconds=1)
        ended = started + timedelta(seconds=duration_s) if status == "ended" else None
        call: dict[str, Any] = {
            "id": call_id or str(uuid.uuid4()),
            "orgId": org_id or self.org_id,
            "type": "inboundPhoneCall",
            "createdAt": iso_ms(created_at),
            "updatedAt": iso_ms(updated_at or ended or started),
            "startedAt": iso_ms(started),
            "endedAt": iso_ms(ended) if ended else None,
            "status": status,
            "endedReason": ended_reason if status == "ended" else None,
            "cost": cost,
            "costBreakdown": _breakdown(cost),
        }
        if assistant_id is not None:
            call["assistantId"] = assistant_id
        if metadata is not None:
            call["metadata"] = metadata
        with self._lock:
            self._calls[call["id"]] = call
            return dict(call)

    def update_call(self, call_id: str, *, updated_at: datetime | None = None, **fields: Any) -> dict:
        """Change a stored call (e.g. its cost settling) and bump updatedAt."""
        with self._lock:
            call = self._calls[call_id]
            call.update(fields)
            if "cost" in fields:
                call["costBreakdown"] = _breakdown(fields["cost"])
            call["updatedAt"] = iso_ms(updated_at or datetime.now(UTC))
            return dict(call)

    @property
    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._calls.values()]

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        with self._lock:
            call = self._calls.get(call_id)
            return dict(call) if call else None

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Each request: {"method", "path", "query": {name: value}}, in arrival order."""
        with self._lock:
            return [dict(r, query=dict(r["query"])) for r in self._log]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def inject_errors(self, *statuses: int) -> None:
        """The next len(statuses) requests answer these HTTP statuses instead (429, 500, 503...)."""
        with self._lock:
            self._errors.extend(statuses)

    def _record(self, method: str, path: str, query: dict[str, str]) -> int | None:
        with self._lock:
            self._log.append({"method": method, "path": path, "query": query})
            return self._errors.popleft() if self._errors else None


def _breakdown(cost: float | None) -> dict[str, Any]:
    total = cost or 0.0
    # A plausible split; only `total` (== cost) is meaningful to the pipeline.
    parts = {"transport": 0.1, "stt": 0.1, "llm": 0.4, "tts": 0.2, "vapi": 0.2}
    out: dict[str, Any] = {k: round(total * share, 6) for k, share in parts.items()}
    out.update(total=total, llmPromptTokens=0, llmCompletionTokens=0, ttsCharacters=0)
    return out


def _bad_request(*messages: str) -> JSONResponse:
    return JSONResponse({"message": list(messages), "error": "Bad Request", "statusCode": 400}, 400)


def create_app(state: FakeVapiState, api_key: str) -> FastAPI:
    """FastAPI app speaking the subset of Vapi's REST API the pipeline uses."""
    app = FastAPI(title="FAKE Vapi API")

    @app.middleware("http")
    async def log_auth_and_faults(request: Request, call_next):
        injected = state._record(request.method, request.url.path, dict(request.query_params))
        if injected is not None:
            return JSONResponse({"message": "injected fault", "statusCode": injected}, injected)
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            return JSONResponse({"message": "Unauthorized", "statusCode": 401}, 401)
        return await call_next(request)

    @app.get("/call")
    def list_calls(request: Request):
        params = request.query_params
        raw_limit = params.get("limit", str(DEFAULT_LIMIT))
        try:
            limit = int(float(raw_limit))
        except ValueError:
            return _bad_request("limit must be a number")
        if not 0 <= limit <= MAX_LIMIT:
            return _bad_request(f"limit must not be less than 0 or greater than {MAX_LIMIT}")
        bounds = []
        for name, (field, op) in _FILTERS.items():
            if name in params:
                try:
                    bounds.append((field, op, _parse_iso(params[name])))
                except ValueError:
                    return _bad_request(f"{name} must be a valid ISO 8601 date string")
        rows = [
            c for c in state.calls if all(op(_parse_iso(c[field]), b) for field, op, b in bounds)
        ]
        rows.sort(key=lambda c: (c["createdAt"], c["id"]), reverse=True)
        return rows[:limit]

    @app.get("/call/{call_id}")
    def get_call(call_id: str):
        call = state.get_call(call_id)
        if call is None:
            return JSONResponse({"message": "Not Found", "statusCode": 404}, 404)
        return call

    return app


def end_of_call_report(call: dict[str, Any], timestamp_ms: int | None = None) -> dict[str, Any]:
    """Vapi's `end-of-call-report` server message for `call` (a call dict as GET /call/:id returns)."""
    return {
        "message": {
            "type": "end-of-call-report",
            "timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
            "endedReason": call.get("endedReason"),
            "cost": call.get("cost"),
            "call": call,
        }
    }


def sign_hmac(hmac_secret: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 over "{timestamp}.{body}" (Vapi's HMACAuthenticationPlan defaults)."""
    return hmac.new(hmac_secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def deliver_end_of_call(
    url: str,
    call: dict[str, Any],
    secret: str | None = None,
    hmac_secret: str | None = None,
    *,
    timestamp_ms: int | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """POST an end-of-call-report for `call` to `url` as Vapi would; returns the response.

    `secret` adds `X-Vapi-Secret`; `hmac_secret` adds `x-timestamp` (ms since epoch) and `x-signature`.
    `timestamp_ms` fixes both the message timestamp and x-timestamp (to test staleness).
    """
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    body = json.dumps(end_of_call_report(call, ts)).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Vapi-Secret"] = secret
    if hmac_secret is not None:
        headers["x-timestamp"] = str(ts)
        headers["x-signature"] = sign_hmac(hmac_secret, str(ts), body)
    return httpx.post(url, content=body, headers=headers, timeout=timeout)
