"""`POST /v1/events`: record usage events in the edge store.

Authentication: `Authorization: Bearer bp_live_...`; the key decides `organisation_id` and
`project_id` (401 for any bad key). Rate limit: `BILLING_API_RATE_LIMIT` requests per key (one
request, whatever its batch size); over it, 429 with Retry-After in seconds.

Body: one event object, or `{"events": [...]}` with 1 to 1,000 events (more: 413; a body over
5 MiB: 413). An event:

- `event_id`: string, 1 to 200 characters; the idempotency key. Unique across projects: use a UUID.
- `metric`: string, 1 to 200 characters.
- `quantity`: a JSON number or a string holding a decimal (`"12.5"`, `1e3`). The body is parsed with
  every number as a `Decimal` built from its own text, so `0.1` is exactly 0.1, never a float. At
  most 26 digits before the point and 12 after (the warehouse's numeric(38, 12)); more is refused,
  never rounded. Negative values are accepted here: the metric's rules apply in the warehouse.
- `occurred_at`: ISO 8601 string with a UTC offset (`2025-01-31T23:59:59Z`, `...+05:30`); a naive
  time is refused. Stored converted to UTC, in `edge_store.utc_text` format.
- `properties`: JSON object (or null, or omitted), at most 16 KiB encoded; its numbers kept exactly.
- `project_id`: optional; when given it must be the key's project.

Other fields are refused (a misspelt field would otherwise be lost silently).

Idempotency: an event_id already in the edge store (or earlier in the same batch) is a `duplicate`:
nothing changes and the first payload stays. The existing ids are read in the same SQLite write
transaction as the insert, so concurrent requests cannot both claim an id. An event_id that another
project already used is refused (`event_id_conflict`), since the edge keys events by event_id alone.

Answers:
- one event: 202 `{"event_id", "status": "accepted"}`; 200 with `"status": "duplicate"`;
  422 `{"detail": [{"loc", "msg", "type"}, ...]}` naming each bad field (FastAPI's format);
  409 on an event_id conflict.
- a batch: per-event results `{"index", "event_id", "status": "accepted"|"duplicate"|"rejected",
  "errors"?}` plus counts. The valid events are stored even when others are rejected. Overall
  status: 200 when none was rejected, 207 (Multi-Status) when some were and some were not, 422
  when all were. A 207 means "read the results": some events were not stored.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from contextlib import closing
from datetime import datetime
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from billing_pipeline import edge_store
from billing_pipeline.api import keys
from billing_pipeline.api.ratelimit import RateLimiter

MAX_BATCH = 1000
MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_PROPERTIES_BYTES = 16 * 1024
MAX_PROPERTIES_DEPTH = 32
_MAX_QUANTITY = Decimal(10) ** 26
_SCALE = Decimal("1e-12")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_ISO_START = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")

router = APIRouter(tags=["events"])


def configure(app: FastAPI) -> None:
    """This router's per-app state (called once by `create_app`)."""
    app.state.events_rate_limiter = RateLimiter.from_text(app.state.api_config.rate_limit)


# --- validation -----------------------------------------------------------------------------------

def _quantity(value: Any) -> str:
    """The quantity as exact decimal text (JSON numbers arrive as Decimal, see `_parse_json`)."""
    if isinstance(value, str):
        if len(value) > 100 or not _DECIMAL_TEXT.fullmatch(value):
            raise PydanticCustomError("decimal_parsing", "quantity must be a decimal number such as 12.5")
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise PydanticCustomError("decimal_type", "quantity must be a number or a string holding one")
    with localcontext() as ctx:
        ctx.prec = 100
        if abs(value) >= _MAX_QUANTITY:
            raise PydanticCustomError("decimal_max_digits", "quantity has over 26 digits before the point")
        if value.quantize(_SCALE) != value:
            raise PydanticCustomError("decimal_max_places", "quantity has more than 12 decimal places")
    return format(value, "f")


def _occurred_at(value: Any) -> str:
    if not isinstance(value, str) or not _ISO_START.match(value):
        raise PydanticCustomError(
            "datetime_parsing", "occurred_at must be an ISO 8601 date and time, e.g. 2025-01-31T12:00:00Z"
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("datetime_parsing", "occurred_at is not a valid ISO 8601 date and time")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PydanticCustomError(
            "timezone_aware", "occurred_at needs a UTC offset (Z or +hh:mm); naive times are ambiguous"
        )
    try:
        return edge_store.utc_text(moment)
    except OverflowError:
        raise PydanticCustomError("datetime_parsing", "occurred_at is out of range")


def _json_text(value: Any, depth: int = 0) -> str:
    """JSON text, with Decimal numbers written exactly (the standard encoder cannot)."""
    if depth > MAX_PROPERTIES_DEPTH:
        raise PydanticCustomError("too_deep", f"properties nest deeper than {MAX_PROPERTIES_DEPTH} levels")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_json_text(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v, depth + 1) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value)  # str (ASCII-escaped), bool, None


def _properties(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "properties must be a JSON object")
    text = _json_text(value)
    if len(text) > MAX_PROPERTIES_BYTES:
        raise PydanticCustomError("too_long", f"properties take more than {MAX_PROPERTIES_BYTES} bytes")
    return text


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("string_unicode", "must be valid Unicode text (no lone surrogates)")
    return value


Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_unicode)]


class EventIn(BaseModel):
    """One event as the edge stores it: every value already in its edge text form."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: Text
    metric: Text
    quantity: Annotated[str, BeforeValidator(_quantity)]
    occurred_at: Annotated[str, BeforeValidator(_occurred_at)]
    properties: Annotated[str | None, BeforeValidator(_properties)] = None
    project_id: Text | None = None

    @field_validator("project_id")
    @classmethod
    def _key_project(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value != info.context["project_id"]:
            raise PydanticCustomError("project_mismatch", "project_id is not the API key's project")
        return value


def _validate(item: Any, key: keys.ApiKey, loc: list) -> tuple[EventIn | None, list[dict]]:
    try:
        return EventIn.model_validate(item, context={"project_id": key.project_id}), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return None, [{**err, "loc": [*loc, *err["loc"]]} for err in errors]


# --- the request ----------------------------------------------------------------------------------

def _rate_limited_key(request: Request, key: keys.ApiKey = Depends(keys.require_api_key)) -> keys.ApiKey:
    wait = request.app.state.events_rate_limiter.hit(key.key_id)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"rate limit exceeded ({request.app.state.api_config.rate_limit} per API key)",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return key


async def _read_body(request: Request) -> bytes:
    too_large = HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _not_a_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(body: bytes) -> Any:
    """Every JSON number becomes a Decimal built from its own text: nothing goes through float."""
    return json.loads(body, parse_float=Decimal, parse_int=Decimal, parse_constant=_not_a_constant)


def _json(content: Any, status_code: int) -> Response:
    # ASCII-escaped: a lone surrogate echoed back (in an event_id, a field name) cannot break the answer.
    return Response(json.dumps(content), status_code=status_code, media_type="application/json")


def _invalid(loc: list, msg: str, type_: str, status_code: int = 422) -> Response:
    return _json({"detail": [{"type": type_, "loc": loc, "msg": msg}]}, status_code)


def _store(path: Path, events: list[EventIn], key: keys.ApiKey, received_at: str) -> list[str]:
    """Insert the new events; per event 'accepted', 'duplicate' or 'conflict' (another project's id)."""
    with closing(edge_store.connect(path)) as conn, edge_store.transaction(conn):
        ids = json.dumps(sorted({event.event_id for event in events}))
        existing = {
            row[0]: (row[1], row[2])
            for row in conn.execute(
                "SELECT event_id, organisation_id, project_id FROM events"
                " WHERE event_id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
        }
        outcomes, rows = [], []
        for event in events:
            owner = existing.get(event.event_id)
            if owner is None:
                outcomes.append("accepted")
                existing[event.event_id] = (key.organisation_id, key.project_id)
                rows.append((event.event_id, key.organisation_id, key.project_id, event.metric,
                             event.quantity, event.occurred_at, received_at, event.properties))
            elif owner == (key.organisation_id, key.project_id):
                outcomes.append("duplicate")
            else:
                outcomes.append("conflict")
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO events (event_id, organisation_id, project_id, metric, quantity,"
            " occurred_at, received_at, properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if conn.total_changes - before != len(rows):  # cannot happen inside one write transaction
            raise sqlite3.IntegrityError("edge store changed during the insert")
        return outcomes


_CONFLICT = {"type": "event_id_conflict", "msg": "event_id is already used by another project;"
             " event ids must be unique across projects (use a UUID)"}


@router.post(
    "/v1/events",
    summary="Record one usage event or a batch of up to 1,000",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"description": "duplicate, or a batch with nothing rejected"},
               207: {"description": "a batch with some events rejected"},
               401: {}, 409: {}, 413: {}, 422: {}, 429: {}},
)
async def record_events(request: Request, key: keys.ApiKey = Depends(_rate_limited_key)) -> Response:
    try:
        payload = _parse_json(await _read_body(request))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _invalid(["body"], "the body is not valid JSON", "json_invalid")

    batch = isinstance(payload, dict) and "events" in payload
    if batch:
        items = payload["events"]
        extra = sorted(set(payload) - {"events"})
        if extra:
            return _invalid(["body", extra[0]], "a batch body holds only `events`", "extra_forbidden")
        if not isinstance(items, list) or not items:
            return _invalid(["body", "events"], "events must be a non-empty list of events", "list_type")
        if len(items) > MAX_BATCH:
            return _invalid(["body", "events"], f"a batch holds at most {MAX_BATCH} events; got {len(items)}",
                            "too_long", status.HTTP_413_CONTENT_TOO_LARGE)
    elif isinstance(payload, dict):
        items = [payload]
    else:
        return _invalid(["body"], 'expected an event object or {"events": [...]}', "model_type")

    checked = [_validate(item, key, ["body", "events", i] if batch else ["body"])
               for i, item in enumerate(items)]
    valid = [event for event, _ in checked if event is not None]
    state = request.app.state
    received_at = edge_store.utc_text(state.clock())
    outcomes = iter(await run_in_threadpool(_store, state.settings.edge_path, valid, key, received_at)
                    if valid else [])

    if not batch:
        event, errors = checked[0]
        if errors:
            return _json({"detail": errors}, 422)
        outcome = next(outcomes)
        if outcome == "conflict":
            return _json({"detail": [{**_CONFLICT, "loc": ["body", "event_id"]}]}, 409)
        return _json({"event_id": event.event_id, "status": outcome}, 202 if outcome == "accepted" else 200)

    results = []
    for i, (item, (event, errors)) in enumerate(zip(items, checked)):
        outcome = next(outcomes) if event is not None else "rejected"
        if outcome == "conflict":
            outcome, errors = "rejected", [{**_CONFLICT, "loc": ["body", "events", i, "event_id"]}]
        event_id = item.get("event_id") if isinstance(item, dict) else None
        if not isinstance(event_id, str) or len(event_id) > 200:
            event_id = None
        result = {"index": i, "event_id": event_id, "status": outcome}
        if errors:
            result["errors"] = errors
        results.append(result)
    counts = {name: sum(r["status"] == name for r in results)
              for name in ("accepted", "duplicate", "rejected")}
    code = 200 if counts["rejected"] == 0 else 422 if counts["rejected"] == len(results) else 207
    return _json({**counts, "results": results}, code)
