"""The notification outbox (billing.notification_outbox): queued with the change, sent afterwards.

Queueing happens in the transaction of the change a notification announces (a trial that ended, a
grace period that started), so there is never a notification without its change or the reverse.
`dedupe_key` names the fact (`grace_started:<grace id>`), so queueing it again is a no-op.

Delivery takes due rows in chunks, each chunk under FOR UPDATE SKIP LOCKED (two deliveries at once
never take the same row), sends them, and records every result of the chunk in one statement. A
sent row is never sent again. A crash in the middle of a chunk sends that chunk again: delivery is at
least once, so each message carries its dedupe key (the HTTP `Idempotency-Key` header, the mail's
Message-ID) for the receiver to drop a repeat. A failed send is retried later (backoff), and after
MAX_ATTEMPTS it is dead: health reports it and `billing-pipeline accounts retry-notifications` requeues it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.accounts import sql_text
from billing_pipeline.accounts.clock import Clock
from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.money import from_minor

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH_SIZE = 100


@dataclass(frozen=True)
class Notification:
    dedupe_key: str
    kind: str
    organisation_id: str
    subject: str
    body: str
    payload: Mapping = field(default_factory=dict)
    notification_id: int | None = None  # set once stored

    def as_json(self) -> dict:
        return asdict(self)


def money(amount_minor: int, currency: str) -> str:
    return f"{from_minor(int(amount_minor), currency)} {currency}"


def when(moment: datetime) -> str:
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def utc_iso(moment: datetime) -> str:
    """For keys and payloads: the same text whatever the database session's time zone."""
    return moment.astimezone(timezone.utc).isoformat()


def queue(conn: sa.Connection, notifications: Iterable[Notification], *, at: datetime, actor: str) -> int:
    """Store the notifications (one statement), due at `at`; returns how many were new."""
    rows = [
        {
            "dedupe_key": n.dedupe_key,
            "kind": n.kind,
            "organisation_id": n.organisation_id,
            "subject": n.subject,
            "body": n.body,
            "payload": dict(n.payload),
        }
        for n in notifications
    ]
    if not rows:
        return 0
    return conn.execute(
        sql_text("queue_notifications"), {"rows": json.dumps(rows, default=str), "at": at, "actor": actor}
    ).rowcount


def retry_delay(attempts: int) -> timedelta:
    """After the n-th failed send: 5 min, 10 min, 20 min, ... at most 6 h."""
    return min(timedelta(minutes=5) * 2 ** (attempts - 1), timedelta(hours=6))


@dataclass
class Delivery:
    via: str
    sent: int = 0
    failed: int = 0
    dead: list[dict] = field(default_factory=list)  # notification_id, kind, organisation_id, last_error


_DUE = sa.text("""
    SELECT notification_id, dedupe_key, kind, organisation_id, subject, body, payload, attempts
    FROM billing.notification_outbox
    WHERE sent_at IS NULL AND dead_at IS NULL AND next_attempt_at <= :now
    ORDER BY next_attempt_at, notification_id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
""")


def deliver_due(
    engine: Engine, sender, clock: Clock, *, batch_size: int = BATCH_SIZE, max_attempts: int = MAX_ATTEMPTS
) -> Delivery:
    """Send every notification due at clock.now() through `sender` (see accounts/senders.py)."""
    delivery = Delivery(via=sender.via)
    while True:
        now = clock.now()
        with engine.begin() as conn:
            rows = conn.execute(_DUE, {"now": now, "limit": batch_size}).mappings().all()
            if not rows:
                return delivery
            errors = _send_chunk(sender, rows)
            results = [
                {
                    "notification_id": r["notification_id"],
                    "error": errors.get(r["notification_id"]),
                    "next_attempt_at": now + retry_delay(r["attempts"] + 1),
                    "dead": r["notification_id"] in errors and r["attempts"] + 1 >= max_attempts,
                }
                for r in rows
            ]
            conn.execute(
                sql_text("record_deliveries"),
                {"results": json.dumps(results, default=str), "now": now, "via": sender.via},
            )
        delivery.sent += len(rows) - len(errors)
        delivery.failed += len(errors)
        delivery.dead += [
            {
                "notification_id": r["notification_id"],
                "kind": r["kind"],
                "organisation_id": r["organisation_id"],
                "last_error": errors[r["notification_id"]],
            }
            for r, res in zip(rows, results, strict=True)
            if res["dead"]
        ]
        if len(rows) < batch_size:
            return delivery


def _send_chunk(sender, rows) -> dict[int, str]:
    """Send each row; returns {notification_id: error} for the ones that failed."""
    errors: dict[int, str] = {}
    try:
        with sender.session() as send:
            for row in rows:
                try:
                    send(
                        Notification(
                            **{
                                k: row[k]
                                for k in (
                                    "dedupe_key",
                                    "kind",
                                    "organisation_id",
                                    "subject",
                                    "body",
                                    "payload",
                                    "notification_id",
                                )
                            }
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - one bad message must not stop the others
                    errors[row["notification_id"]] = _describe(exc)
    except Exception as exc:  # noqa: BLE001 - the sender could not even connect: every row failed
        reason = _describe(exc)
        errors = {row["notification_id"]: reason for row in rows}
    if errors:
        log.warning(
            "%d of %d notifications not sent (%s), retried later",
            len(errors),
            len(rows),
            next(iter(errors.values())),
        )
    return errors


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def requeue_dead(
    engine: Engine, *, now: datetime, actor: str, notification_ids: list[int] | None = None
) -> int:
    """Make dead notifications (all, or the ids given) due again with fresh attempts; audited."""
    with engine.begin() as conn:
        requeued = conn.execute(
            sa.text("""
            UPDATE billing.notification_outbox
            SET dead_at = NULL, attempts = 0, next_attempt_at = :now
            WHERE dead_at IS NOT NULL
              AND (CAST(:ids AS bigint[]) IS NULL OR notification_id = ANY(CAST(:ids AS bigint[])))
            RETURNING notification_id
        """),
            {"now": now, "ids": notification_ids},
        ).scalars().all()
        record(conn, [AuditEntry("notification", str(n), "requeued", actor=actor, from_state="dead",
                                 to_state="pending") for n in requeued])
    return len(requeued)
