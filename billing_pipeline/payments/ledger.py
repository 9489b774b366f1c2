"""billing.payments: provider observations applied in one set-based statement (sql/apply_observations.sql).

Both the webhook handlers and the syncs write through `apply_observations`, under one transaction-level
advisory lock, so the audit rows' from/to states are exact even when both run at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa

from billing_pipeline.payments import sql_text
from billing_pipeline.payments.objects import Observation

LOCK_KEY = 0x7061796D  # "paym": every writer of billing.payments and billing.invoice_payments


@dataclass(frozen=True)
class Applied:
    recorded: int  # objects new to the ledger
    updated: int  # objects whose state or refunded amount moved


@dataclass(frozen=True)
class Seen:
    """An observation with where it came from: the webhook event (id and receipt time) or a sync."""

    observation: Observation
    event_id: str | None = None
    webhook_at: datetime | None = None


def lock(conn: sa.Connection) -> None:
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})


def apply_observations(
    conn: sa.Connection, seen: Iterable[Seen], *, via: Literal["webhook", "sync"], actor: str
) -> Applied:
    """Apply the observations in the caller's transaction; the order given breaks ties between equals."""
    rows: Sequence[dict] = [
        s.observation.row(
            seq=i, event_id=s.event_id, webhook_at=s.webhook_at.isoformat() if s.webhook_at else None
        )
        for i, s in enumerate(seen)
    ]
    if not rows:
        return Applied(0, 0)
    lock(conn)
    result = conn.execute(
        sql_text("apply_observations"), {"rows": json.dumps(rows, default=str), "via": via, "actor": actor}
    ).one()
    return Applied(result.recorded, result.updated)
