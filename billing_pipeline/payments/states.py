"""The payment state machine: canonical states, their order, and the provider words mapped onto them.

Webhooks arrive at least once and in no guaranteed order (Stripe retries for 3 days, Razorpay for
24 h), and the daily syncs bring the provider's current state on top. So the ledger never applies
"the latest message": it applies a state only when it is further along than the one it holds.

Canonical states and their order (a higher rank wins; an equal or lower one is ignored):

    created 0 < pending 1 < authorized 2 < failed 3 = canceled 3 < captured 4 = succeeded 4
            < partially_refunded 5 < refunded 6

So a late `failed` never undoes a `captured`, and a duplicate changes nothing. `succeeded` is a refund
that went through (refunds are money objects of their own; their parent's refunded amount only grows).

The one move against that order: Razorpay documents that a failed payment can later be authorized
(a late authorization from the bank, https://razorpay.com/docs/payments/payments/#payment-life-cycle).
In Razorpay's payment order `failed` therefore ranks below `authorized` (and still below `captured`);
nowhere else does a state move back.
"""

from __future__ import annotations

STATES = (
    "created",
    "pending",
    "authorized",
    "failed",
    "canceled",
    "captured",
    "succeeded",
    "partially_refunded",
    "refunded",
)

_RANK = {
    "created": 0,
    "pending": 1,
    "authorized": 2,
    "failed": 3,
    "canceled": 3,
    "captured": 4,
    "succeeded": 4,
    "partially_refunded": 5,
    "refunded": 6,
}
# (provider, object_type) -> state -> rank, where the generic order does not hold
_RANK_OVERRIDES = {("razorpay", "payment"): {"failed": 1}}


def rank(provider: str, object_type: str, state: str) -> int:
    if state not in _RANK:
        raise ValueError(f"unknown payment state {state!r}")
    return _RANK_OVERRIDES.get((provider, object_type), {}).get(state, _RANK[state])


def can_move(provider: str, object_type: str, from_state: str | None, to_state: str) -> bool:
    """Whether the ledger applies `to_state` over `from_state` (None: the object is new)."""
    if from_state is None:
        return True
    return rank(provider, object_type, to_state) > rank(provider, object_type, from_state)


def _refund_state(state: str, amount: int, refunded: int) -> str:
    if refunded <= 0 or state != "captured":
        return state
    return "refunded" if refunded >= amount else "partially_refunded"


def stripe_state(object_type: str, obj: dict) -> str:
    """Canonical state of a Stripe charge, payment intent or refund (https://docs.stripe.com/api)."""
    status = obj.get("status")
    if object_type == "charge":
        base = {"pending": "pending", "failed": "failed"}.get(status)
        if base is None and status == "succeeded":
            base = "captured" if obj.get("captured", True) else "authorized"
        if base is None:
            raise ValueError(f"unknown Stripe charge status {status!r}")
        if obj.get("refunded") and base == "captured":
            return "refunded"
        return _refund_state(base, obj["amount"], obj.get("amount_refunded") or 0)
    if object_type == "payment_intent":
        mapped = {
            "requires_payment_method": "created",
            "requires_confirmation": "created",
            "requires_action": "created",
            "processing": "pending",
            "requires_capture": "authorized",
            "canceled": "canceled",
            "succeeded": "captured",
        }
    elif object_type == "refund":
        mapped = {
            "pending": "pending",
            "requires_action": "pending",
            "succeeded": "succeeded",
            "failed": "failed",
            "canceled": "canceled",
        }
    else:
        raise ValueError(f"not a Stripe payment object: {object_type!r}")
    if status not in mapped:
        raise ValueError(f"unknown Stripe {object_type} status {status!r}")
    return mapped[status]


def razorpay_state(object_type: str, obj: dict) -> str:
    """Canonical state of a Razorpay payment, order or refund (https://razorpay.com/docs/api/)."""
    status = obj.get("status")
    mapped = {
        "payment": {
            "created": "created",
            "authorized": "authorized",
            "captured": "captured",
            "refunded": "refunded",
            "failed": "failed",
        },
        "order": {"created": "created", "attempted": "pending", "paid": "captured"},
        "refund": {"pending": "pending", "processed": "succeeded", "failed": "failed"},
    }.get(object_type)
    if mapped is None:
        raise ValueError(f"not a Razorpay payment object: {object_type!r}")
    if status not in mapped:
        raise ValueError(f"unknown Razorpay {object_type} status {status!r}")
    state = mapped[status]
    if object_type == "payment":
        state = _refund_state(state, obj["amount"], obj.get("amount_refunded") or 0)
    return state
