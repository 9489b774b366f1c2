"""Settlement: payments allocated to finalized invoices; paid, partial and overpaid derived per invoice."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
import sqlalchemy as sa
from test_payments_support import add_customers, add_invoices, ts

from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import razorpay_observation, stripe_observation
from billing_pipeline.payments.settlement import settle_invoices, settlement_states

ACTOR = "run:settle"
IN_WINDOW = ts(2026, 11, 3, 12)


def _charge(n, amount, *, customer="cus_a", currency="usd", status="succeeded", created=IN_WINDOW, **extra):
    return stripe_observation(
        {
            "object": "charge",
            "id": f"ch_{n}",
            "amount": amount,
            "currency": currency,
            "status": status,
            "customer": customer,
            "created": created,
            **extra,
        }
    )


def _apply(engine, *observations):
    with engine.begin() as conn:
        apply_observations(conn, [Seen(o) for o in observations], via="sync", actor=ACTOR)
        return settle_invoices(conn, actor=ACTOR)


def _balances(engine):
    with engine.connect() as conn:
        return {r.number: r for r in conn.execute(sa.text("SELECT * FROM billing.invoice_balances"))}


@pytest.fixture
def invoices(engine):
    add_customers(
        engine,
        {
            "org_a": ("stripe", "cus_a", "USD"),
            "org_b": ("stripe", "cus_b", "USD"),
            "org_r": ("razorpay", "cust_r", "INR"),
        },
    )
    return {
        i["organisation_id"]: i
        for i in add_invoices(engine, [("org_a", 10000), ("org_b", 2500), ("org_r", 50000)])
    }


def test_payments_naming_an_invoice_settle_it_and_the_balance_shows_partial_paid_and_overpaid(
    engine, invoices
):
    a, b, r = invoices["org_a"], invoices["org_b"], invoices["org_r"]
    first = _apply(
        engine,
        _charge(1, 4000, metadata={"invoice_id": str(a["invoice_id"])}),
        _charge(2, 3000, customer="cus_b", metadata={"invoice_number": b["number"]}),
        razorpay_observation(
            {
                "entity": "order",
                "id": "order_1",
                "amount": 50000,
                "currency": "INR",
                "status": "paid",
                "notes": {"invoice_id": str(r["invoice_id"])},
                "created_at": IN_WINDOW,
            }
        ),
        razorpay_observation(
            {
                "entity": "payment",
                "id": "pay_1",
                "amount": 50000,
                "currency": "INR",
                "status": "captured",
                "order_id": "order_1",
                "notes": [],
                "created_at": IN_WINDOW,
            }
        ),
    )
    assert (first.allocations, first.by_reference, first.invoices_changed) == (3, 3, 3)
    balances = _balances(engine)
    assert (
        balances[a["number"]].paid_minor,
        balances[a["number"]].balance_minor,
        balances[a["number"]].settlement_state,
    ) == (4000, 6000, "partially_paid")
    assert (balances[b["number"]].paid_minor, balances[b["number"]].settlement_state) == (3000, "overpaid")
    assert balances[r["number"]].settlement_state == "paid"  # by the invoice named on its order

    second = _apply(engine, _charge(3, 6000, metadata={"invoice_id": str(a["invoice_id"])}))
    assert (second.allocations, second.invoices_changed) == (1, 1)
    assert _balances(engine)[a["number"]].settlement_state == "paid"
    assert _apply(engine).allocations == 0  # settled again: nothing new
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text(
                "SELECT from_state, to_state, actor, detail FROM billing.audit_log"
                " WHERE entity_type = 'invoice' AND entity_id = :i ORDER BY audit_id"
            ),
            {"i": str(a["invoice_id"])},
        ).all()
    assert [(x.from_state, x.to_state, x.actor) for x in audit] == [
        ("unpaid", "partially_paid", ACTOR),
        ("partially_paid", "paid", ACTOR),
    ]
    assert audit[1].detail["paid_minor"] == 10000 and audit[1].detail["number"] == a["number"]
    with engine.connect() as conn:
        assert settlement_states(conn) == {"overpaid": 1, "paid": 2}


def test_a_refund_allocates_a_negative_delta_and_a_failed_payment_allocates_nothing(engine, invoices):
    a = invoices["org_a"]
    ref = {"invoice_id": str(a["invoice_id"])}
    _apply(engine, _charge(1, 10000, metadata=ref), _charge(2, 10000, status="failed", metadata=ref))
    assert _balances(engine)[a["number"]].settlement_state == "paid"

    _apply(engine, _charge(1, 10000, metadata=ref, amount_refunded=2500))
    balance = _balances(engine)[a["number"]]
    assert (balance.paid_minor, balance.settlement_state, balance.payments) == (7500, "partially_paid", 1)
    with engine.connect() as conn:
        deltas = conn.execute(
            sa.text("SELECT amount_minor, rule FROM billing.invoice_payments" " ORDER BY allocation_id")
        ).all()
    assert [tuple(d) for d in deltas] == [(10000, "reference"), (-2500, "reference")]


def test_without_a_reference_the_customer_amount_and_window_rule_matches_oldest_first(engine, invoices):
    b = invoices["org_b"]
    later = add_invoices(engine, [("org_b", 2500)], month=date(2026, 11, 1))
    _apply(
        engine,
        _charge(1, 2500, customer="cus_b", created=ts(2026, 11, 20)),
        _charge(2, 2500, customer="cus_b", created=ts(2026, 11, 21)),
        _charge(3, 2499, customer="cus_b"),  # not the amount
        _charge(4, 10000, customer="cus_a", created=ts(2026, 9, 30)),  # before the period
        _charge(5, 10000, customer="cus_nobody"),  # no organisation
        _charge(6, 10000, customer="cus_a", metadata={"invoice_id": "999999"}),  # names no invoice
        _charge(7, 10000, customer="cus_a", currency="eur"),
    )  # another currency
    balances = _balances(engine)
    assert balances[b["number"]].settlement_state == "paid"
    assert balances[later[0]["number"]].settlement_state == "paid"
    assert balances[invoices["org_a"]["number"]].settlement_state == "unpaid"
    with engine.connect() as conn:
        pairs = conn.execute(
            sa.text(
                "SELECT p.object_id, a.invoice_id, a.rule FROM billing.invoice_payments a"
                " JOIN billing.payments p"
                " USING (payment_id) ORDER BY p.object_id"
            )
        ).all()
    assert [tuple(x) for x in pairs] == [
        ("ch_1", b["invoice_id"], "customer_amount_window"),
        ("ch_2", later[0]["invoice_id"], "customer_amount_window"),
    ]


def test_allocations_are_append_only(engine, invoices):
    _apply(engine, _charge(1, 100, metadata={"invoice_id": str(invoices["org_a"]["invoice_id"])}))
    for statement in (
        "UPDATE billing.invoice_payments SET amount_minor = 1",
        "DELETE FROM billing.invoice_payments",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(statement))


# --- what settlement reads: billing.settlement_queue (sql/0093_settlement_queue.sql) ---


def _queued(engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT p.object_id FROM billing.settlement_queue JOIN billing.payments p USING (payment_id)"
                )
            ).scalars()
        )


def test_settled_payments_leave_the_queue_and_captured_money_no_rule_placed_yet_stays(engine, invoices):
    a = invoices["org_a"]
    _apply(
        engine,
        _charge(1, 10000, metadata={"invoice_id": str(a["invoice_id"])}),  # allocated
        _charge(2, 7000, status="pending", customer="cus_b"),  # no money yet
        _charge(3, 10000, customer="cus_nobody"),  # names no invoice and no organisation
        _charge(4, 7000, customer="cus_b", created=ts(2026, 11, 20)),  # no invoice of 7000 yet
    )
    assert _queued(engine) == {"ch_4"}
    # the invoice it pays is finalized later, with no payment recorded since: the queued payment meets it
    november = add_invoices(engine, [("org_b", 7000)], month=date(2026, 11, 1))[0]
    settled = _apply(engine)
    assert (settled.allocations, settled.by_rule) == (1, 1)
    assert _balances(engine)[november["number"]].settlement_state == "paid"
    assert _queued(engine) == set()
    # a change to an allocated payment queues it again, and its refund is allocated
    refunded = _charge(1, 10000, metadata={"invoice_id": str(a["invoice_id"])}, amount_refunded=1000)
    assert _apply(engine, refunded).allocations == 1
    assert _balances(engine)[a["number"]].paid_minor == 9000
    # the pending one captured: queued by its update, allocated by the rule
    _apply(engine, _charge(2, 7000, customer="cus_b", created=ts(2026, 11, 21)))
    assert _queued(engine) == {"ch_2"}  # captured now, and November's 7000 is already paid: waits


def test_a_payment_intent_recorded_after_its_charge_names_the_invoice_for_it(engine, invoices):
    a = invoices["org_a"]
    assert _apply(engine, _charge(1, 10000, customer=None, payment_intent="pi_1")).allocations == 0
    assert _queued(engine) == set()  # nothing names an invoice or an organisation for it yet
    intent = stripe_observation(
        {"object": "payment_intent", "id": "pi_1", "amount": 10000, "currency": "usd", "status": "succeeded",
         "created": IN_WINDOW, "metadata": {"invoice_number": a["number"]}}
    )
    settled = _apply(engine, intent)
    assert (settled.allocations, settled.by_reference) == (1, 1)
    assert _balances(engine)[a["number"]].settlement_state == "paid"


def test_a_change_committed_while_settlement_runs_is_settled_next_time(engine, invoices):
    """The queue row is deleted only if it is still the one settlement read (queued_seq)."""
    a = invoices["org_a"]
    with engine.begin() as conn:  # recorded and queued, not settled yet
        apply_observations(
            conn,
            [Seen(_charge(1, 10000, metadata={"invoice_id": str(a["invoice_id"])}))],
            via="sync",
            actor=ACTOR,
        )
    # refunded meanwhile by a writer that holds the queue row until it commits
    with engine.connect() as refund, ThreadPoolExecutor(1) as pool:
        refund.begin()
        refund.execute(
            sa.text(
                "UPDATE billing.payments SET status = 'refunded', status_rank = 5,"
                " amount_refunded_minor = 10000 WHERE object_id = 'ch_1'"
            )
        )
        settling = pool.submit(lambda: _apply(engine))
        waiting = 0
        with engine.connect() as conn:
            for _ in range(400):  # up to 20 s on a loaded machine
                waiting = conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND datname = current_database()")
                ).scalar()
                conn.rollback()  # pg_stat_activity is read once per transaction: a new one each time
                if waiting or settling.done():
                    break
                time.sleep(0.05)
        refund.commit()
        assert waiting == 1, "settlement did not wait for the queue row the refund holds"
        assert settling.result().allocations == 1  # it read the payment as captured
    assert _balances(engine)[a["number"]].settlement_state == "paid"
    assert _queued(engine) == {"ch_1"}
    assert _apply(engine).allocations == 1  # the refund, -10000
    assert _balances(engine)[a["number"]].settlement_state == "unpaid"
