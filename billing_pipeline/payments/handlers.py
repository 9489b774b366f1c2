"""The inbox handlers of Stripe and Razorpay events: parse each event, apply the set to billing.payments.

Importing this module registers both (billing_pipeline/defs/payments imports it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa

from billing_pipeline.payments import inbox
from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import (
    Observation,
    razorpay_event_observations,
    stripe_event_observations,
)


def _handler(parse: Callable[[Mapping], list[Observation]]) -> inbox.Handler:
    def handle(conn: sa.Connection, events: Sequence[inbox.InboxEvent], actor: str) -> dict[int, str]:
        errors: dict[int, str] = {}
        seen: list[Seen] = []
        for event in events:
            try:
                observations = parse(event.payload)
            except (ValueError, KeyError, TypeError) as exc:
                errors[event.inbox_id] = f"{type(exc).__name__}: {exc}"
                continue
            seen.extend(Seen(o, event.event_id, event.received_at) for o in observations)
        apply_observations(conn, seen, via="webhook", actor=actor)
        return errors

    return handle


PROVIDERS = ("stripe", "razorpay")
inbox.register_handler("stripe", _handler(stripe_event_observations))
inbox.register_handler("razorpay", _handler(razorpay_event_observations))
