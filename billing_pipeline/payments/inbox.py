"""The webhook inbox: verified events stored at once, applied later, each at most once.

Register a provider's handler with one line, in the module that owns the provider:

    inbox.register_handler("vapi", apply_vapi_events)

A handler is `handler(conn, events, actor) -> {inbox_id: reason}`. It gets a batch of `InboxEvent`s
of its provider (oldest first) and applies them in the caller's transaction on `conn`, set-based (one
statement for the batch, not one per event). It returns the events it could not apply with a short
reason (an empty dict when all applied), and must leave those unapplied, e.g. by parsing every event
first and applying only the good ones. If it raises, the batch is rolled back to a savepoint and each
event is tried alone, so one poison event never holds back the others. Events of other types than
it cares about count as applied: they stay in the inbox with their raw body, marked processed.
`actor` (`run:<id>`, `cli:<user>`) is for the audit rows the handler writes.

Then process a provider's due events with `process_inbox(engine, ["vapi"], actor=...)` (an asset, a
sensor-driven job or the CLI). A failed event is retried with exponential backoff from 1 s to 1 h:
waits of 1 s, 15 s, 4 min and 1 h between its 5 attempts; after the 5th failure it is dead-lettered
(billing.webhook_dead_letters, with the last error). `replay_dead_letters` (CLI `webhooks replay`)
puts dead letters back in the queue with a fresh set of attempts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
FIRST_RETRY_DELAY = timedelta(seconds=1)
LAST_RETRY_DELAY = timedelta(hours=1)
BATCH_SIZE = 500


@dataclass(frozen=True)
class InboxEvent:
    inbox_id: int
    provider: str
    event_id: str
    event_type: str
    payload: Mapping[str, Any]
    received_at: datetime
    attempts: int  # failed attempts so far


Handler = Callable[[sa.Connection, Sequence[InboxEvent], str], Mapping[int, str]]
_HANDLERS: dict[str, Handler] = {}


def register_handler(provider: str, handler: Handler) -> Handler:
    """Make `handler` the one that applies `provider`'s inbox events (registering again replaces it)."""
    _HANDLERS[provider] = handler
    return handler


def registered_providers() -> tuple[str, ...]:
    return tuple(sorted(_HANDLERS))


def retry_delay(failures: int) -> timedelta:
    """The wait after the `failures`-th failed attempt: geometric from 1 s (first) to 1 h (last)."""
    ratio = (LAST_RETRY_DELAY / FIRST_RETRY_DELAY) ** (1 / (MAX_ATTEMPTS - 2))
    return min(FIRST_RETRY_DELAY * ratio ** (failures - 1), LAST_RETRY_DELAY)


# -- receiving ---------------------------------------------------------------------------------------
_STORE = sa.text(
    "INSERT INTO billing.webhook_inbox (provider, event_id, event_type, payload, raw_body)"
    " VALUES (:provider, :event_id, :event_type, CAST(:payload AS jsonb), :raw_body)"
    " ON CONFLICT (provider, event_id) DO NOTHING RETURNING inbox_id"
)


def store_event(
    conn: sa.Connection, provider: str, event_id: str, event_type: str, raw_body: bytes
) -> int | None:
    """Store a verified event exactly as received; returns its inbox_id, or None for a redelivery."""
    return conn.execute(
        _STORE,
        {
            "provider": provider,
            "event_id": event_id,
            "event_type": event_type,
            "payload": raw_body.decode("utf-8"),
            "raw_body": raw_body,
        },
    ).scalar()


# -- processing ----------------------------------------------------------------------------------------
@dataclass
class InboxResult:
    processed: Counter = field(default_factory=Counter)  # (provider, event_type) -> events applied
    retried: int = 0
    dead_lettered: list[dict] = field(default_factory=list)  # inbox_id, provider, event_id, attempts, error

    @property
    def processed_total(self) -> int:
        return sum(self.processed.values())


_CLAIM = sa.text("""
    SELECT inbox_id, provider, event_id, event_type, payload, received_at, attempts
    FROM billing.webhook_inbox
    WHERE processed_at IS NULL AND dead_at IS NULL AND next_attempt_at <= :now
      AND provider = ANY(CAST(:providers AS text[]))
    ORDER BY inbox_id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
""")
_DONE = sa.text("""
    UPDATE billing.webhook_inbox SET processed_at = :now, attempts = attempts + 1, last_error = NULL
    WHERE inbox_id = ANY(CAST(:ids AS bigint[]))
""")
_FAILED = sa.text("""
    WITH f AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[]),
                             CAST(:next_at AS timestamptz[]), CAST(:dead AS boolean[]))
            AS f(inbox_id, error, next_at, dead)
    ),
    updated AS (
        UPDATE billing.webhook_inbox w
        SET attempts = w.attempts + 1, last_error = f.error, next_attempt_at = f.next_at,
            dead_at = CASE WHEN f.dead THEN CAST(:now AS timestamptz) END
        FROM f WHERE w.inbox_id = f.inbox_id
        RETURNING w.inbox_id, w.provider, w.event_id, w.attempts, w.last_error, w.dead_at
    )
    INSERT INTO billing.webhook_dead_letters (inbox_id, provider, event_id, attempts, last_error, died_at)
    SELECT inbox_id, provider, event_id, attempts, last_error, dead_at FROM updated WHERE dead_at IS NOT NULL
    RETURNING inbox_id, provider, event_id, attempts, last_error
""")


def _describe(exc: BaseException) -> str:
    # A database error's str() carries the whole statement and its parameters: keep the driver's message.
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {orig or exc}".strip()[:1000]


def _apply(conn: sa.Connection, handler: Handler, events: Sequence[InboxEvent], actor: str) -> dict[int, str]:
    try:
        with conn.begin_nested():
            return {int(k): str(v) for k, v in handler(conn, events, actor).items()}
    except Exception as exc:  # the set failed as a whole: each event alone, in its own savepoint
        if len(events) == 1:
            return {events[0].inbox_id: _describe(exc)}
        log.warning(
            "%s handler failed on a batch of %d (%s); applying them one by one",
            events[0].provider,
            len(events),
            type(exc).__name__,
        )
        errors: dict[int, str] = {}
        for event in events:
            errors.update(_apply(conn, handler, [event], actor))
        return errors


def process_inbox(
    engine: Engine,
    providers: Iterable[str] | None = None,
    *,
    actor: str,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> InboxResult:
    """Apply every due event of `providers` (default: all with a handler), batch by batch.

    `now` (default: the database's clock) decides what is due and stamps the attempts; an event that
    fails here is due again only after its backoff, so one call attempts each event at most once.
    """
    providers = sorted(providers) if providers is not None else list(registered_providers())
    missing = [p for p in providers if p not in _HANDLERS]
    if missing:
        raise ValueError(
            f"no inbox handler registered for {', '.join(missing)}: import the module that "
            "calls billing_pipeline.payments.inbox.register_handler for it"
        )
    result = InboxResult()
    if not providers:
        return result
    if now is None:
        with engine.connect() as conn:
            now = conn.execute(sa.text("SELECT now()")).scalar_one()
    while True:
        with engine.begin() as conn:
            rows = conn.execute(_CLAIM, {"now": now, "providers": providers, "limit": batch_size}).all()
            if not rows:
                return result
            events = [
                InboxEvent(
                    r.inbox_id, r.provider, r.event_id, r.event_type, r.payload, r.received_at, r.attempts
                )
                for r in rows
            ]
            errors: dict[int, str] = {}
            for provider in providers:
                batch = [e for e in events if e.provider == provider]
                if batch:
                    errors.update(_apply(conn, _HANDLERS[provider], batch, actor))
            done = [e for e in events if e.inbox_id not in errors]
            conn.execute(_DONE, {"now": now, "ids": [e.inbox_id for e in done]})
            result.processed.update((e.provider, e.event_type) for e in done)
            failed = [e for e in events if e.inbox_id in errors]
            if failed:
                dead = (
                    conn.execute(
                        _FAILED,
                        {
                            "now": now,
                            "ids": [e.inbox_id for e in failed],
                            "errors": [errors[e.inbox_id] for e in failed],
                            "next_at": [now + retry_delay(e.attempts + 1) for e in failed],
                            "dead": [e.attempts + 1 >= MAX_ATTEMPTS for e in failed],
                        },
                    )
                    .mappings()
                    .all()
                )
                result.dead_lettered.extend(dict(d) for d in dead)
                result.retried += len(failed) - len(dead)
                for e in failed:
                    log.warning(
                        "%s event %s (%s) failed, attempt %d of %d: %s",
                        e.provider,
                        e.event_id,
                        e.event_type,
                        e.attempts + 1,
                        MAX_ATTEMPTS,
                        errors[e.inbox_id],
                    )


_DUE = sa.text("""
    SELECT count(*) FROM billing.webhook_inbox
    WHERE processed_at IS NULL AND dead_at IS NULL AND next_attempt_at <= now()
      AND provider = ANY(CAST(:providers AS text[]))
""")


def due_events(conn: sa.Connection, providers: Iterable[str]) -> int:
    """How many events of `providers` are waiting and due now (what a sensor asks before a run)."""
    return conn.execute(_DUE, {"providers": list(providers)}).scalar_one()


# -- dead letters ----------------------------------------------------------------------------------------
_REPLAY = sa.text("""
    WITH picked AS (
        UPDATE billing.webhook_dead_letters SET replayed_at = now()
        WHERE replayed_at IS NULL
          AND (CAST(:ids AS bigint[]) IS NULL OR dead_letter_id = ANY(CAST(:ids AS bigint[])))
          AND (CAST(:provider AS text) IS NULL OR provider = CAST(:provider AS text))
        RETURNING dead_letter_id, inbox_id, provider, event_id, attempts, last_error
    ),
    requeued AS (
        UPDATE billing.webhook_inbox w
        SET attempts = 0, dead_at = NULL, last_error = NULL, next_attempt_at = now()
        FROM picked WHERE w.inbox_id = picked.inbox_id
        RETURNING w.inbox_id
    ),
    audited AS (
        INSERT INTO billing.audit_log (entity_type, entity_id, action, from_state, to_state, actor, detail)
        SELECT 'webhook_event', provider || ':' || event_id, 'dead_letter_replayed', 'dead', 'queued',
               CAST(:actor AS text),
               jsonb_build_object('dead_letter_id', dead_letter_id, 'attempts', attempts,
                                  'last_error', last_error)
        FROM picked
        RETURNING 1
    )
    SELECT picked.dead_letter_id, picked.provider, picked.event_id FROM picked JOIN requeued USING (inbox_id)
    ORDER BY picked.dead_letter_id
""")

_DEAD = sa.text("""
    SELECT d.dead_letter_id, d.inbox_id, d.provider, d.event_id, w.event_type, d.attempts, d.last_error,
           d.died_at
    FROM billing.webhook_dead_letters d JOIN billing.webhook_inbox w USING (inbox_id)
    WHERE d.replayed_at IS NULL AND (CAST(:provider AS text) IS NULL OR d.provider = CAST(:provider AS text))
    ORDER BY d.dead_letter_id
""")


def replay_dead_letters(
    engine: Engine, *, actor: str, dead_letter_ids: Sequence[int] | None = None, provider: str | None = None
) -> list[dict]:
    """Put waiting dead letters (all, or the ids / provider given) back in the queue; audited.

    Each replayed event gets MAX_ATTEMPTS new attempts, due now. Returns the replayed letters.
    """
    with engine.begin() as conn:
        rows = (
            conn.execute(
                _REPLAY,
                {
                    "ids": list(dead_letter_ids) if dead_letter_ids is not None else None,
                    "provider": provider,
                    "actor": actor,
                },
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def waiting_dead_letters(conn: sa.Connection, provider: str | None = None) -> list[dict]:
    return [dict(r) for r in conn.execute(_DEAD, {"provider": provider}).mappings()]
