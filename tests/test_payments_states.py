"""The forward-only state machine: provider words mapped, and any delivery order ending in the same row."""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_pipeline.payments import states
from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import (
    razorpay_event_observations,
    razorpay_observation,
    stripe_event_observations,
    stripe_observation,
)


def test_a_late_failure_never_undoes_a_capture_and_only_razorpay_failed_to_authorized_goes_back():
    backward = [
        (p, o, a, b)
        for (p, o) in [
            ("stripe", "charge"),
            ("stripe", "payment_intent"),
            ("razorpay", "payment"),
            ("razorpay", "order"),
        ]
        for a, b in itertools.permutations(states.STATES, 2)
        if states.can_move(p, o, a, b)
        and states.rank("stripe", "charge", b) < states.rank("stripe", "charge", a)
    ]
    assert backward == [("razorpay", "payment", "failed", "authorized")]
    assert not states.can_move("stripe", "charge", "captured", "failed")
    assert not states.can_move("razorpay", "payment", "captured", "failed")
    assert not states.can_move("razorpay", "payment", "authorized", "failed")
    assert states.can_move("razorpay", "payment", "failed", "captured")
    assert not states.can_move("stripe", "charge", "captured", "captured")
    assert states.can_move("stripe", "charge", None, "failed")


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"status": "pending", "amount": 5}, "pending"),
        ({"status": "succeeded", "amount": 5, "captured": False}, "authorized"),
        ({"status": "succeeded", "amount": 5, "captured": True}, "captured"),
        ({"status": "succeeded", "amount": 5, "amount_refunded": 2}, "partially_refunded"),
        ({"status": "succeeded", "amount": 5, "amount_refunded": 5, "refunded": True}, "refunded"),
        ({"status": "failed", "amount": 5}, "failed"),
    ],
)
def test_stripe_charge_states(obj, expected):
    assert states.stripe_state("charge", obj) == expected


def test_provider_words_map_to_canonical_states_and_unknown_ones_are_refused():
    assert states.stripe_state("payment_intent", {"status": "requires_capture"}) == "authorized"
    assert states.stripe_state("refund", {"status": "succeeded"}) == "succeeded"
    assert states.razorpay_state("order", {"status": "attempted"}) == "pending"
    assert states.razorpay_state("refund", {"status": "processed"}) == "succeeded"
    assert (
        states.razorpay_state("payment", {"status": "captured", "amount": 9, "amount_refunded": 9})
        == "refunded"
    )
    with pytest.raises(ValueError, match="unknown Stripe charge status 'disputed'"):
        states.stripe_state("charge", {"status": "disputed", "amount": 1})
    with pytest.raises(ValueError, match="unknown Razorpay payment status"):
        states.razorpay_state("payment", {"status": "lost", "amount": 1})


def test_objects_refuse_what_they_cannot_read():
    base = {
        "object": "charge",
        "id": "ch_1",
        "amount": 100,
        "currency": "usd",
        "status": "succeeded",
        "created": 1,
    }
    assert stripe_observation(base).currency == "USD"
    for bad, message in [
        ({"amount": 1.5}, "non-negative integer"),
        ({"amount": -1}, "non-negative integer"),
        ({"amount": True}, "non-negative integer"),
        ({"currency": "xxx"}, "unsupported currency"),
        ({"id": ""}, "without an id"),
        ({"created": "yesterday"}, "unix seconds"),
    ]:
        with pytest.raises(ValueError, match=message):
            stripe_observation({**base, **bad})
    assert stripe_event_observations({"data": {"object": {"object": "customer", "id": "cus_1"}}}) == []
    with pytest.raises(ValueError, match="without data.object"):
        stripe_event_observations({"type": "charge.succeeded"})
    rzp = {
        "entity": "payment",
        "id": "pay_1",
        "amount": 100,
        "currency": "INR",
        "status": "captured",
        "created_at": 1,
        "notes": [],
        "order_id": "order_1",
    }
    [obs] = razorpay_event_observations({"payload": {"payment": {"entity": rzp}}})
    assert (obs.parent_object_id, obs.invoice_ref, obs.status) == ("order_1", None, "captured")
    assert razorpay_observation({**rzp, "notes": {"invoice_number": "INV-1"}}).invoice_ref == "INV-1"


CHARGE_STATES = {
    "pending": {"status": "pending"},
    "failed": {"status": "failed"},
    "authorized": {"status": "succeeded", "captured": False},
    "captured": {"status": "succeeded", "captured": True},
    "partially_refunded": {"status": "succeeded", "captured": True, "amount_refunded": 300},
    "refunded": {"status": "succeeded", "captured": True, "amount_refunded": 1000, "refunded": True},
}
RAZORPAY_STATES = {
    "created": {"status": "created"},
    "failed": {"status": "failed"},
    "authorized": {"status": "authorized"},
    "captured": {"status": "captured"},
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    charge_states=st.lists(st.sampled_from(list(CHARGE_STATES)), min_size=1, max_size=8),
    payment_states=st.lists(st.sampled_from(list(RAZORPAY_STATES)), min_size=1, max_size=6),
    data=st.data(),
)
def test_any_delivery_order_batching_and_redelivery_ends_in_the_most_advanced_state(
    engine, charge_states, payment_states, data
):
    deliveries = data.draw(
        st.permutations([("stripe", s) for s in charge_states] + [("razorpay", s) for s in payment_states])
    )
    split = data.draw(st.integers(0, len(deliveries)))
    ids = {"stripe": f"ch_{abs(hash(tuple(deliveries)))}", "razorpay": f"pay_{abs(hash(tuple(deliveries)))}"}

    def observe(provider, state):
        if provider == "stripe":
            return stripe_observation(
                {
                    "object": "charge",
                    "id": ids[provider],
                    "amount": 1000,
                    "currency": "usd",
                    "created": 1,
                    **CHARGE_STATES[state],
                }
            )
        return razorpay_observation(
            {
                "entity": "payment",
                "id": ids[provider],
                "amount": 1000,
                "currency": "INR",
                "created_at": 1,
                **RAZORPAY_STATES[state],
            }
        )

    with engine.begin() as conn:
        for batch in (deliveries[:split], deliveries[split:]):
            apply_observations(conn, [Seen(observe(*d)) for d in batch], via="webhook", actor="run:prop")
        rows = {
            r.object_id: r
            for r in conn.execute(
                sa.text(
                    "SELECT object_id, status, amount_refunded_minor FROM billing.payments"
                    " WHERE object_id = ANY(:ids)"
                ),
                {"ids": list(ids.values())},
            )
        }
        conn.rollback()
    best_charge = max(charge_states, key=lambda s: states.rank("stripe", "charge", s))
    best_payment = max(payment_states, key=lambda s: states.rank("razorpay", "payment", s))
    refunded = max(CHARGE_STATES[s].get("amount_refunded", 0) for s in charge_states)
    assert (rows[ids["stripe"]].status, rows[ids["stripe"]].amount_refunded_minor) == (best_charge, refunded)
    assert rows[ids["razorpay"]].status == best_payment
