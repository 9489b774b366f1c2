"""Apply Vapi end-of-call reports to billing.calls, at most once per call id, and charge each call once.

The report (Vapi `ServerMessageEndOfCallReport`, see fakes/vapi_fake.py) is
`{"message": {"type": "end-of-call-report", "cost", "endedReason", "timestamp", "call": {...}}}`.
The message's own `cost` and `endedReason` are the final ones and win over the embedded call's.
Its inbox key is `end-of-call-report:<call id>`: Vapi sends one per call and no event id.

Importing this module registers `handle_vapi_events` as the webhook inbox's handler for "vapi"
(billing_pipeline.payments.inbox: retries with backoff, dead letters, replay).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from billing_pipeline.calls import arrays, sql_text
from billing_pipeline.calls.charging import CURRENCY, charge_calls
from billing_pipeline.money import to_minor
from billing_pipeline.payments import inbox
from billing_pipeline.providers.vapi_api import normalize_call

EVENT_TYPE = "end-of-call-report"

_UPSERT_COLUMNS = (
    "call_id", "claimed", "vapi_org_id", "assistant_id", "status", "ended_reason", "created_at", "started_at",
    "ended_at", "provider_updated_at", "cost_usd", "cost_minor", "cost_breakdown", "metadata", "received_at",
)  # fmt: skip


def event_id(call_id: str) -> str:
    """The webhook inbox key of a call's end-of-call report."""
    return f"{EVENT_TYPE}:{call_id}"


def parse_end_of_call(payload: Any) -> dict[str, Any]:
    """The reported call, normalized (providers.vapi_api.normalize_call); ValueError saying what is wrong."""
    message = payload.get("message") if isinstance(payload, Mapping) else None
    if not isinstance(message, Mapping):
        raise ValueError("not a Vapi server message: the body has no 'message' object")
    if message.get("type") != EVENT_TYPE:
        raise ValueError(f"not an {EVENT_TYPE}: message.type is {message.get('type')!r}")
    call = message.get("call")
    if not isinstance(call, Mapping):
        raise ValueError(f"the {EVENT_TYPE} has no 'call' object")
    raw = dict(call, status="ended")  # the report is sent once the call has ended
    if message.get("cost") is not None:
        raw["cost"] = message["cost"]
    if message.get("endedReason"):
        raw["endedReason"] = message["endedReason"]
    return normalize_call(raw)


def organisation_of(call: Mapping[str, Any]) -> str | None:
    """The organisation a call is billed to: its metadata.organisation_id."""
    value = call["metadata"].get("organisation_id")
    return str(value) if value not in (None, "") else None


def cost_minor(call: Mapping[str, Any]) -> int | None:
    """USD cents, rounded once half-up; None while Vapi has no cost for the call."""
    return to_minor(call["cost_usd"], CURRENCY) if call["cost_known"] else None


@dataclass(frozen=True)
class AppliedCall:
    call_id: str
    outcome: Literal["inserted", "late", "replay"]  # late: reconciliation had already recovered the call
    charge_status: str | None  # after this application; None for a replay (nothing was touched)


def apply_calls(
    conn: sa.Connection, reports: Sequence[tuple[Mapping[str, Any], datetime]], *, actor: str
) -> list[AppliedCall]:
    """Record reported calls (normalized, with when each webhook arrived) and charge them, set-based,
    in the caller's transaction; results in input order. A call id repeated in the batch is a replay."""
    first: dict[str, tuple[Mapping[str, Any], datetime]] = {}
    for call, received_at in reports:
        first.setdefault(call["id"], (call, received_at))
    rows = [
        (
            call["id"], organisation_of(call), call["org_id"], call["assistant_id"], call["status"],
            call["ended_reason"], call["created_at"], call["started_at"], call["ended_at"],
            call["updated_at"], call["cost_usd"] if call["cost_known"] else None, cost_minor(call),
            json.dumps(call["cost_breakdown"]), json.dumps(call["metadata"]), received_at,
        )
        for call, received_at in first.values()
    ]  # fmt: skip
    applied = {}
    if rows:
        upserted = conn.execute(sql_text("upsert_webhook_calls"), arrays(_UPSERT_COLUMNS, rows))
        applied = {r.call_id: r for r in upserted}
    charged = charge_calls(conn, [i for i, r in applied.items() if r.charge_status == "pending"], actor=actor)
    results, seen = [], set()
    for call, _ in reports:
        row = applied.get(call["id"]) if call["id"] not in seen else None
        seen.add(call["id"])
        if row is None:
            results.append(AppliedCall(call["id"], "replay", None))
        else:
            status = charged.statuses.get(row.call_id, row.charge_status)
            results.append(AppliedCall(row.call_id, "inserted" if row.inserted else "late", status))
    return results


def apply_end_of_call(
    conn: sa.Connection, payload: Any, *, actor: str, received_at: datetime | None = None
) -> AppliedCall:
    """Record one report's call and charge it once, in the caller's transaction (idempotent per call id).

    `received_at`: when the webhook reached us (default now). ValueError for a payload that is not an
    end-of-call report with a well-formed call.
    """
    return apply_calls(conn, [(parse_end_of_call(payload), received_at or datetime.now(UTC))], actor=actor)[0]


def handle_vapi_events(conn: sa.Connection, events: Sequence[inbox.InboxEvent], actor: str) -> dict[int, str]:
    """The inbox handler: every parseable report applied as one set; the others returned with why."""
    errors, good = {}, []
    for event in events:
        if event.event_type != EVENT_TYPE:
            continue  # nothing to bill; counts as applied (the router stores only end-of-call reports)
        try:
            good.append((parse_end_of_call(event.payload), event.received_at))
        except ValueError as exc:
            errors[event.inbox_id] = f"ValueError: {exc}"
    apply_calls(conn, good, actor=actor)
    return errors


inbox.register_handler("vapi", handle_vapi_events)
