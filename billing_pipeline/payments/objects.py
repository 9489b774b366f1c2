"""Provider payment objects (from webhook payloads or sync listings) as one normalized `Observation`.

Both paths into the ledger go through here, so a webhook and a sync describing the same object yield
the same row. Anything that does not parse (a missing id, a non-integer amount, an unknown currency or
state) raises ValueError: the event is retried and, if it keeps failing, dead-lettered with that reason.

Invoice reference: `metadata.invoice_id` or `metadata.invoice_number` (Stripe), `notes.invoice_id` or
`notes.invoice_number` (Razorpay); `organisation_id` in the same place names the organisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from billing_pipeline.money import is_valid_currency
from billing_pipeline.payments.states import rank, razorpay_state, stripe_state

STRIPE_OBJECTS = ("charge", "payment_intent", "refund")
RAZORPAY_OBJECTS = ("order", "payment", "refund")  # the order a payment belongs to comes first


@dataclass(frozen=True)
class Observation:
    provider: str
    object_type: str
    object_id: str
    parent_object_id: str | None
    provider_customer_id: str | None
    claimed_organisation_id: str | None
    invoice_ref: str | None
    amount_minor: int
    amount_refunded_minor: int
    currency: str
    fee_minor: int | None
    status: str
    status_rank: int
    provider_status: str
    created_at: int  # unix seconds, as the provider reports it
    raw: Mapping[str, Any]

    def row(self, **extra: Any) -> dict[str, Any]:
        return {**asdict(self), "raw": dict(self.raw), **extra}


def _text(value: Any) -> str | None:
    if isinstance(value, Mapping):  # an expanded object: keep its id
        value = value.get("id")
    return str(value) if value not in (None, "") else None


def _minor(obj: Mapping, field: str, *, required: bool = True) -> int | None:
    value = obj.get(field)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer of minor units, got {value!r}")
    return value


def _common(
    provider: str, object_type: str, obj: Mapping, state: str, tags: Mapping | None, created_field: str
) -> dict[str, Any]:
    object_id = obj.get("id")
    if not isinstance(object_id, str) or not object_id:
        raise ValueError(f"{provider} {object_type} without an id")
    currency = str(obj.get("currency") or "").upper()
    if not is_valid_currency(currency):
        raise ValueError(
            f"{provider} {object_type} {object_id}: unsupported currency {obj.get('currency')!r}"
        )
    created = obj.get(created_field)
    if isinstance(created, bool) or not isinstance(created, int):
        raise ValueError(f"{provider} {object_type} {object_id}: {created_field} must be unix seconds")
    tags = tags if isinstance(tags, Mapping) else {}  # Razorpay sends empty notes as []
    return {
        "provider": provider,
        "object_type": object_type,
        "object_id": object_id,
        "claimed_organisation_id": _text(tags.get("organisation_id")),
        "invoice_ref": _text(tags.get("invoice_id")) or _text(tags.get("invoice_number")),
        "amount_minor": _minor(obj, "amount"),
        "amount_refunded_minor": _minor(obj, "amount_refunded", required=False) or 0,
        "currency": currency,
        "status": state,
        "status_rank": rank(provider, object_type, state),
        "provider_status": str(obj.get("status")),
        "created_at": created,
        "raw": obj,
    }


def stripe_observation(obj: Mapping, object_type: str | None = None) -> Observation:
    """A Stripe charge, payment intent or refund (`object_type` defaults to the object's `object`)."""
    object_type = object_type or obj.get("object")
    if object_type not in STRIPE_OBJECTS:
        raise ValueError(f"not a Stripe payment object: {object_type!r}")
    parent = {"charge": "payment_intent", "refund": "charge"}.get(object_type)
    return Observation(
        **_common("stripe", object_type, obj, stripe_state(object_type, obj), obj.get("metadata"), "created"),
        parent_object_id=_text(obj.get(parent)) if parent else None,
        provider_customer_id=_text(obj.get("customer")),
        fee_minor=None,  # Stripe's fee is on the balance transaction (stripe_balance_transactions)
    )


def razorpay_observation(obj: Mapping, object_type: str | None = None) -> Observation:
    """A Razorpay payment, order or refund (`object_type` defaults to the object's `entity`)."""
    object_type = object_type or obj.get("entity")
    if object_type not in RAZORPAY_OBJECTS:
        raise ValueError(f"not a Razorpay payment object: {object_type!r}")
    parent = {"payment": "order_id", "refund": "payment_id"}.get(object_type)
    return Observation(
        **_common(
            "razorpay", object_type, obj, razorpay_state(object_type, obj), obj.get("notes"), "created_at"
        ),
        parent_object_id=_text(obj.get(parent)) if parent else None,
        provider_customer_id=_text(obj.get("customer_id")),
        fee_minor=_minor(obj, "fee", required=False) if object_type == "payment" else None,
    )


def stripe_event_observations(event: Mapping) -> list[Observation]:
    """The payment object a Stripe event carries; [] for events about other objects (customers, ...)."""
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        raise ValueError("Stripe event without data.object")
    return [stripe_observation(obj)] if obj.get("object") in STRIPE_OBJECTS else []


def razorpay_event_observations(event: Mapping) -> list[Observation]:
    """Every payment, order and refund entity a Razorpay event carries ([] for other events)."""
    payload = event.get("payload")
    if not isinstance(payload, Mapping):
        raise ValueError("Razorpay event without payload")
    found = []
    for name in RAZORPAY_OBJECTS:
        wrapper = payload.get(name)
        if wrapper is None:
            continue
        if not isinstance(wrapper, Mapping) or not isinstance(wrapper.get("entity"), Mapping):
            raise ValueError(f"Razorpay event payload.{name} without an entity")
        found.append(razorpay_observation(wrapper["entity"], name))
    return found
