"""The provider's side of calls: what Vapi's `GET /call` returns for a window, in billing.vapi_calls.

Replacing a window is idempotent: its rows (by createdAt) are deleted and the fresh listing inserted
in one statement, in one transaction. Vapi settles a call's cost after the call ends, so listing a
window again later picks up the settled costs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from billing_pipeline.calls import arrays
from billing_pipeline.calls.apply import cost_minor, organisation_of
from billing_pipeline.providers.vapi_api import normalize_call

_DELETE = sa.text("DELETE FROM billing.vapi_calls WHERE created_at >= :start AND created_at < :end")
_INSERT = sa.text(
    """
    INSERT INTO billing.vapi_calls (call_id, vapi_org_id, claimed_organisation_id, created_at, updated_at,
        started_at, ended_at, status, ended_reason, cost_usd, cost_minor, raw)
    SELECT call_id, vapi_org_id, claimed, created_at, updated_at, started_at, ended_at, status, ended_reason,
           cost_usd, cost_minor, CAST(raw AS jsonb)
    FROM unnest(CAST(:call_id AS text[]), CAST(:vapi_org_id AS text[]), CAST(:claimed AS text[]),
                CAST(:created_at AS timestamptz[]), CAST(:updated_at AS timestamptz[]),
                CAST(:started_at AS timestamptz[]), CAST(:ended_at AS timestamptz[]), CAST(:status AS text[]),
                CAST(:ended_reason AS text[]), CAST(:cost_usd AS numeric[]), CAST(:cost_minor AS bigint[]),
                CAST(:raw AS text[]))
         AS v (call_id, vapi_org_id, claimed, created_at, updated_at, started_at, ended_at, status,
               ended_reason, cost_usd, cost_minor, raw)
    """
)
_COLUMNS = (
    "call_id", "vapi_org_id", "claimed", "created_at", "updated_at", "started_at", "ended_at", "status",
    "ended_reason", "cost_usd", "cost_minor", "raw",
)  # fmt: skip


def replace_provider_calls(
    conn: sa.Connection, start: datetime, end: datetime, raw_calls: Sequence[dict[str, Any]]
) -> int:
    """Make billing.vapi_calls hold exactly `raw_calls` for [start, end); returns the rows stored.

    Raises ValueError naming every malformed call, or a call created outside the window, before
    anything is written (a bad listing must not silently shrink the provider's side).
    """
    rows, problems = [], []
    for raw in raw_calls:
        try:
            call = normalize_call(raw)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if not start <= call["created_at"] < end:
            problems.append(
                f"call {call['id']} was created at {call['created_at'].isoformat()}, outside the window"
            )
            continue
        rows.append(
            (
                call["id"], call["org_id"], organisation_of(call), call["created_at"], call["updated_at"],
                call["started_at"], call["ended_at"], call["status"], call["ended_reason"],
                call["cost_usd"] if call["cost_known"] else None, cost_minor(call), json.dumps(raw),
            )
        )  # fmt: skip
    if problems:
        raise ValueError(
            f"Vapi GET /call returned {len(problems)} unusable call(s) for {start.isoformat()} to "
            f"{end.isoformat()}:\n" + "\n".join(f"  - {p}" for p in problems[:50])
        )
    conn.execute(_DELETE, {"start": start, "end": end})
    if rows:
        conn.execute(_INSERT, arrays(_COLUMNS, rows))
    return len(rows)
