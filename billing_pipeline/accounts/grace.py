"""Grace periods: a failed invoice payment gives the organisation time to pay before it is restricted.

As of an instant T, in one transaction (sql/open_grace_periods.sql, close_grace_periods.sql,
organisation_access.sql):
1. every finalized, unpaid invoice named by a failed payment (failed at or before T) opens a grace
   period starting at that failure and lasting its plan's grace_period_days (default 7);
2. every period whose invoice is now paid is `paid` (also after it expired: the restriction lifts);
   every open period whose end is at or before T, still unpaid, is `expired`;
3. organisations follow: `grace` while a period is open (access kept, like active), `restricted`
   while one expired unpaid, `active` again once none is left.
Each transition is audited (entity grace_period, and organisation for status changes) and announced
(grace_started, grace_expired, payment_received). Running it twice as of T changes nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine

from billing_pipeline import accounts
from billing_pipeline.accounts import outbox
from billing_pipeline.audit import AuditEntry, record

_ORG_ACTIONS = {"grace": "grace_started", "restricted": "restricted", "active": "restored"}


@dataclass
class GraceResult:
    opened: list[dict] = field(default_factory=list)
    closed: list[dict] = field(default_factory=list)  # to_status paid or expired
    status_changes: list[dict] = field(default_factory=list)  # organisation_id, from_status, to_status
    notifications_queued: int = 0

    def count(self, to_status: str) -> int:
        return sum(1 for c in self.closed if c["to_status"] == to_status)


def run_grace(engine: Engine, *, as_of: datetime, actor: str) -> GraceResult:
    result = GraceResult()
    with engine.begin() as conn:
        accounts.lock(conn)
        result.opened = accounts.fetch(conn, "open_grace_periods", {"as_of": as_of, "actor": actor})
        result.closed = accounts.fetch(conn, "close_grace_periods", {"as_of": as_of})
        result.status_changes = accounts.fetch(conn, "organisation_access")
        record(
            conn,
            [
                *(
                    AuditEntry(
                        "grace_period",
                        str(g["grace_id"]),
                        "opened",
                        actor=actor,
                        to_state="open",
                        detail={
                            "invoice_id": g["invoice_id"],
                            "number": g["number"],
                            "organisation_id": g["organisation_id"],
                            "balance_minor": g["balance_minor"],
                            "currency": g["currency"],
                            "failed_payment": g["failed_payment"],
                            "started_at": g["started_at"],
                            "ends_at": g["ends_at"],
                            "grace_days": g["grace_days"],
                        },
                    )
                    for g in result.opened
                ),
                *(
                    AuditEntry(
                        "grace_period",
                        str(g["grace_id"]),
                        g["to_status"],
                        actor=actor,
                        from_state=g["from_status"],
                        to_state=g["to_status"],
                        detail={
                            "invoice_id": g["invoice_id"],
                            "number": g["number"],
                            "as_of": as_of,
                            "ends_at": g["ends_at"],
                            "paid_minor": g["paid_minor"],
                            "balance_minor": g["balance_minor"],
                        },
                    )
                    for g in result.closed
                ),
                *(
                    AuditEntry(
                        "organisation",
                        c["organisation_id"],
                        _ORG_ACTIONS[c["to_status"]],
                        actor=actor,
                        from_state=c["from_status"],
                        to_state=c["to_status"],
                        detail={"as_of": as_of},
                    )
                    for c in result.status_changes
                ),
            ],
        )
        result.notifications_queued = outbox.queue(
            conn, [*map(_started, result.opened), *map(_closed, result.closed)], at=as_of, actor=actor
        )
    return result


def _started(g: dict) -> outbox.Notification:
    owed = outbox.money(g["balance_minor"], g["currency"])
    return outbox.Notification(
        dedupe_key=f"grace_started:{g['grace_id']}",
        kind="grace_started",
        organisation_id=g["organisation_id"],
        subject=f"Payment failed for invoice {g['number']}",
        body=(
            f"We could not collect {owed} for invoice {g['number']}. Your account stays active until "
            f"{outbox.when(g['ends_at'])}; after that it is restricted until the invoice is paid."
        ),
        payload={
            "invoice_id": g["invoice_id"],
            "number": g["number"],
            "balance_minor": g["balance_minor"],
            "currency": g["currency"],
            "grace_ends_at": outbox.utc_iso(g["ends_at"]),
        },
    )


def _closed(g: dict) -> outbox.Notification:
    payload = {
        "invoice_id": g["invoice_id"],
        "number": g["number"],
        "currency": g["currency"],
        "balance_minor": g["balance_minor"],
    }
    if g["to_status"] == "paid":
        return outbox.Notification(
            dedupe_key=f"payment_received:{g['grace_id']}",
            kind="payment_received",
            organisation_id=g["organisation_id"],
            subject=f"Payment received for invoice {g['number']}",
            body=(
                f"Thank you: invoice {g['number']} is paid"
                + (" and your account is no longer restricted." if g["from_status"] == "expired" else ".")
            ),
            payload=payload,
        )
    return outbox.Notification(
        dedupe_key=f"grace_expired:{g['grace_id']}",
        kind="grace_expired",
        organisation_id=g["organisation_id"],
        subject=f"Account restricted: invoice {g['number']} is unpaid",
        body=(
            f"The grace period for invoice {g['number']} ended on {outbox.when(g['ends_at'])} with "
            f"{outbox.money(g['balance_minor'], g['currency'])} still due. The account is restricted "
            "until the invoice is paid."
        ),
        payload=payload,
    )
