"""Vapi REST client (httpx), call normalization and webhook verification. Plain Python, no Dagster.

Vapi facts used (sources in billing_pipeline/fakes/vapi_fake.py and ../shared/PROVIDERS.md):
`GET /call` returns a bare JSON array (no cursor) filtered by createdAtGe/createdAtLt and capped by
`limit`; timestamps are ISO 8601 with milliseconds; `cost` is USD as a JSON float.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from billing_pipeline.providers import retry

DEFAULT_BASE_URL = "https://api.vapi.ai"
MAX_PAGE_LIMIT = 1000
_MS = timedelta(milliseconds=1)


class VapiError(RuntimeError):
    """Any failure talking to Vapi."""


class VapiHTTPError(VapiError):
    def __init__(self, status_code: int, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status_code, self.retry_after = status_code, retry_after


class VapiAuthError(VapiHTTPError):
    """401/403: the API key is wrong or lacks access."""


class VapiWindowTooDenseError(VapiError):
    """A 1 ms window still returned a full page: the calls cannot all be fetched by createdAt alone."""


def format_ts(dt: datetime) -> str:
    """Vapi's timestamp form: UTC, milliseconds, `Z` (`2024-05-01T12:00:00.123Z`)."""
    if dt.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware, got naive {dt!r}")
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _ceil_ms(dt: datetime) -> datetime:
    dt = dt.astimezone(UTC)
    rem = dt.microsecond % 1000
    return dt if rem == 0 else dt + timedelta(microseconds=1000 - rem)


class VapiClient:
    """Read calls from Vapi's REST API.

    Retries 429 (honouring Retry-After), 5xx and transport errors under the project's retry policy
    (`providers/retry.py`), `max_attempts` in all, then raises VapiHTTPError / VapiError naming the
    attempts. Other 4xx raise at once (401/403: VapiAuthError).
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        page_limit: int = 100,
        transport: httpx.BaseTransport | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
        backoff_initial: float | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("Vapi API key is empty")
        if not 1 <= page_limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"page_limit must be within 1..{MAX_PAGE_LIMIT}, got {page_limit}")
        self.page_limit = page_limit
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout or retry.timeout_seconds(),
            transport=transport,
        )
        self._max_attempts, self._backoff_initial = max_attempts, backoff_initial

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VapiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        def once() -> Any:
            resp = self._http.get(path, params=params)
            if resp.status_code >= 400:
                try:
                    detail = resp.json().get("message", resp.text)
                except (ValueError, AttributeError):
                    detail = resp.text
                msg = f"Vapi GET {path} failed with HTTP {resp.status_code}: {str(detail)[:300]}"
                if resp.status_code in (401, 403):
                    raise VapiAuthError(resp.status_code, msg + " (check VAPI_API_KEY)")
                raise VapiHTTPError(resp.status_code, msg, resp.headers.get("retry-after"))
            try:
                return resp.json()
            except ValueError as exc:
                raise VapiError(f"Vapi GET {path} returned a non-JSON body") from exc

        policy = retry.retrying(self._max_attempts, self._backoff_initial)
        try:
            return policy(once)
        except httpx.TransportError as exc:
            attempts = policy.statistics.get("attempt_number", 1)
            raise VapiError(
                f"could not reach Vapi at {self._http.base_url} for GET {path} in {attempts} attempt(s): {exc!r}"
            ) from exc

    def get_call(self, call_id: str) -> dict[str, Any]:
        return self._get(f"/call/{call_id}")

    def _page(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        params = {"createdAtGe": format_ts(start), "createdAtLt": format_ts(end), "limit": self.page_limit}
        rows = self._get("/call", params)
        if not isinstance(rows, list):
            raise VapiError(f"Vapi GET /call returned {type(rows).__name__}, expected a JSON array")
        return rows

    def list_calls(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Every call with start <= createdAt < end, each once, ordered by (createdAt, id).

        Vapi has no cursor, so a window whose answer is a full page (`page_limit` rows) is split in two
        halves at a millisecond boundary and each half fetched again, recursively. Bounds are rounded
        up to the millisecond (Vapi's precision), which keeps [start, end) exact. A window of 1 ms that
        is still full raises VapiWindowTooDenseError instead of silently truncating.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        if start > end:
            raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
        found: dict[str, dict[str, Any]] = {}
        stack = [(_ceil_ms(start), _ceil_ms(end))]
        while stack:
            lo, hi = stack.pop()
            if lo >= hi:
                continue
            rows = self._page(lo, hi)
            if len(rows) >= self.page_limit:
                if hi - lo <= _MS:
                    raise VapiWindowTooDenseError(
                        f"{len(rows)} calls created within 1 ms at {format_ts(lo)} fill a page of "
                        f"{self.page_limit}; raise page_limit (max {MAX_PAGE_LIMIT}) to fetch them all"
                    )
                mid_ms = (hi - lo) // _MS // 2
                mid = lo + mid_ms * _MS
                stack.append((mid, hi))
                stack.append((lo, mid))
                continue
            for row in rows:
                found[row["id"]] = row
        return sorted(found.values(), key=lambda c: (_parse_ts(c["createdAt"]), c["id"]))


def _parse_ts(value: Any, field: str = "timestamp") -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be an ISO 8601 string, got {value!r}")
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"{field} {value!r} has no UTC offset")
    return dt.astimezone(UTC)


def parse_cost(x: Any) -> Decimal:
    """Vapi's USD cost (a JSON float) as an exact Decimal: `Decimal(str(x))`, so 0.1 -> Decimal("0.1").

    None (cost not known yet, e.g. a call still in progress) -> Decimal("0"); `normalize_call` keeps
    `cost_known` so callers can tell "not settled" from "free". Strings and Decimals are accepted;
    booleans, NaN, infinities and negative amounts raise ValueError. No rounding here: callers round
    to minor units once, per line.
    """
    if x is None:
        return Decimal("0")
    if isinstance(x, bool) or not isinstance(x, (int, float, str, Decimal)):
        raise ValueError(f"Vapi cost must be a number, got {x!r}")
    try:
        value = Decimal(str(x).strip())
    except InvalidOperation as exc:
        raise ValueError(f"Vapi cost {x!r} is not a number") from exc
    if not value.is_finite():
        raise ValueError(f"Vapi cost {x!r} is not finite")
    if value < 0:
        raise ValueError(f"Vapi cost {x!r} is negative")
    return value


def normalize_call(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields we store for a Vapi call.

    Keys: id, org_id, created_at, updated_at, started_at, ended_at (aware UTC datetimes; started/ended
    None when absent), status, ended_reason, cost_usd (exact Decimal USD, unrounded), cost_known (the
    raw cost was present), cost_breakdown (dict), assistant_id, metadata (dict).
    Missing id/createdAt/updatedAt or a malformed timestamp/cost raises ValueError.
    """
    for key in ("id", "createdAt", "updatedAt"):
        if not raw.get(key):
            raise ValueError(f"Vapi call is missing {key!r}: {str(dict(raw))[:200]}")
    opt = {k: _parse_ts(raw[k], k) if raw.get(k) else None for k in ("startedAt", "endedAt")}
    return {
        "id": str(raw["id"]),
        "org_id": raw.get("orgId"),
        "created_at": _parse_ts(raw["createdAt"], "createdAt"),
        "updated_at": _parse_ts(raw["updatedAt"], "updatedAt"),
        "started_at": opt["startedAt"],
        "ended_at": opt["endedAt"],
        "status": raw.get("status"),
        "ended_reason": raw.get("endedReason"),
        "cost_usd": parse_cost(raw.get("cost")),
        "cost_known": raw.get("cost") is not None,
        "cost_breakdown": dict(raw.get("costBreakdown") or {}),
        "assistant_id": raw.get("assistantId"),
        "metadata": dict(raw.get("metadata") or {}),
    }


def _eq(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str | None = None,
    hmac_secret: str | None = None,
    now: float | datetime | None = None,
    tolerance: float = 300,
) -> bool:
    """True when a Vapi server message is authentic.

    With `secret`: `Authorization: Bearer <secret>`, `X-Vapi-Secret: <secret>` or `X-Vapi-Signature:
    <secret>` (Vapi's docs name both header spellings for the plain secret token). With `hmac_secret`:
    `x-signature` = hex HMAC-SHA256 over "{x-timestamp}.{raw body}" (optional "sha256=" prefix) and an
    `x-timestamp` within `tolerance` seconds of `now` (epoch seconds or datetime; the header may be in
    seconds or milliseconds). All comparisons are constant-time. Either configured method suffices.
    Raises ValueError when neither secret is configured (a configuration error, not a bad request).
    """
    if not secret and not hmac_secret:
        raise ValueError("no Vapi webhook secret configured (VAPI_WEBHOOK_SECRET)")
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    if secret:
        scheme, _, token = h.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _eq(token.strip(), secret):
            return True
        if _eq(h.get("x-vapi-secret"), secret) or _eq(h.get("x-vapi-signature"), secret):
            return True
    if hmac_secret:
        ts_raw, sig = h.get("x-timestamp", "").strip(), h.get("x-signature", "").strip()
        if not ts_raw or not sig:
            return False
        try:
            ts = float(ts_raw)
        except ValueError:
            return False
        if not math.isfinite(ts):
            return False
        if ts > 1e11:  # milliseconds since epoch
            ts /= 1000
        now_s = now.timestamp() if isinstance(now, datetime) else (time.time() if now is None else now)
        if abs(now_s - ts) > tolerance:
            return False
        expected = hmac.new(hmac_secret.encode(), ts_raw.encode() + b"." + body, hashlib.sha256)
        sig = sig.removeprefix("sha256=").lower()
        if _eq(sig, expected.hexdigest()):
            return True
    return False
