"""The append-only audit log of billing state changes (billing.audit_log; triggers forbid edits).

Every state change of an invoice, payment, wallet, trial or grace period is recorded here, in the
same transaction as the change, with its actor: `run:<dagster run id>`, `sensor:<name>`,
`cli:<user>` or `api:<route>`.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa


@dataclass(frozen=True)
class AuditEntry:
    entity_type: str
    entity_id: str
    action: str
    actor: str
    from_state: str | None = None
    to_state: str | None = None
    detail: Mapping = field(default_factory=dict)


def run_actor(run_id: str) -> str:
    return f"run:{run_id}"


def cli_actor(name: str | None = None) -> str:
    """`cli:<name>` for a command run by a person: the name given (`--actor`), else the OS user."""
    if name:
        return f"cli:{name.strip()}"
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return f"cli:{user}"


_INSERT = sa.text(
    "INSERT INTO billing.audit_log (entity_type, entity_id, action, from_state, to_state, actor, detail)"
    " VALUES (:entity_type, :entity_id, :action, :from_state, :to_state, :actor, CAST(:detail AS jsonb))"
)


def record(conn: sa.Connection, entries: Iterable[AuditEntry]) -> int:
    """Append entries in the caller's transaction (one executemany, not a round trip each)."""
    params = [
        {
            "entity_type": e.entity_type,
            "entity_id": e.entity_id,
            "action": e.action,
            "from_state": e.from_state,
            "to_state": e.to_state,
            "actor": e.actor,
            "detail": json.dumps(dict(e.detail), default=str),
        }
        for e in entries
    ]
    if params:
        conn.execute(_INSERT, params)
    return len(params)
