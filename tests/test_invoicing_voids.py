"""Voids: a finalized unpaid invoice voided keeps its number, stays immutable, leaves the balances; late
usage it billed becomes billable again; a replacement is issued on request; paid invoices are refused."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from test_accounts_support import add_org, add_plan, audit, record_charges, rows, stripe_charge, utc

from billing_pipeline.invoicing import numbering, voids

pytest_plugins = ["test_accounts_support", "test_invoicing_support"]


def _draft(conn, org: str, *, month: str = "2026-02-01", late_events: tuple[str, ...] = ()) -> int:
    """A draft invoice of 5000 with one late_usage line billing `late_events`; returns its id."""
    build = uuid.uuid4()
    conn.execute(
        sa.text(
            "INSERT INTO billing.invoice_draft_builds (build_id, period_start, built_by, draft_count)"
            " VALUES (:b, :m, 't', 1)"
        ),
        {"b": build, "m": month},
    )
    invoice_id = conn.execute(
        sa.text("""
        INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, plan_id, plan_code,
            plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor, credits_applied_minor,
            total_minor, build_id, created_by)
        SELECT organisation_id, CAST(:m AS date), (CAST(:m AS date) + interval '1 month')::date, currency, plan_id,
               plan_code, 1, '{}', 0, 5000, 0, 0, 0, 5000, :b, 't'
        FROM billing.organisations WHERE organisation_id = :org RETURNING invoice_id"""),
        {"m": month, "b": build, "org": org},
    ).scalar_one()
    line = conn.execute(
        sa.text("""
        INSERT INTO billing.invoice_lines (invoice_id, kind, metric, units, amount_unrounded, amount_minor,
            original_period_start)
        VALUES (:i, 'late_usage', 'api_calls', 2, 5000, 5000, '2026-01-01') RETURNING line_id"""),
        {"i": invoice_id},
    ).scalar_one()
    for event_id in late_events:
        conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_late_events (line_id, event_id, occurred_at, ingested_at,"
                " quantity) VALUES (:l, :e, '2026-01-20', '2026-02-03', 1)"
            ),
            {"l": line, "e": event_id},
        )
    return invoice_id


def _finalize(conn, invoice_id: int, number: str) -> None:
    numbering.reserve(conn, "INV", 2026, 1)  # as finalization does: the counter knows the number is used
    conn.execute(
        sa.text(
            "UPDATE billing.invoices SET status = 'finalized', number = :n, finalized_at = now(),"
            " finalized_by = 't' WHERE invoice_id = :i"
        ),
        {"n": number, "i": invoice_id},
    )


@pytest.fixture
def issued(engine):
    with engine.begin() as conn:
        add_org(conn, "acme", add_plan(conn, "basic"), customer="cus_acme")
        invoice_id = _draft(conn, "acme", late_events=("ev-1", "ev-2"))
        _finalize(conn, invoice_id, "INV-2026-000001")
    return invoice_id


def test_a_late_event_is_billed_once_on_non_void_invoices_and_again_after_a_void(engine, issued):
    with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError, match="invoice_billed_events"):
        _draft(conn, "acme", month="2026-03-01", late_events=("ev-1",))  # already billed

    voided = voids.void_invoice(
        engine, "INV-2026-000001", reason="wrong customer address", actor="cli:finance"
    )

    assert voided.events_released == 2
    (inv,) = rows(
        engine, "SELECT status, number, total_minor FROM billing.invoices WHERE invoice_id = :i", i=issued
    )
    assert inv == {"status": "void", "number": "INV-2026-000001", "total_minor": 5000}
    assert rows(engine, "SELECT * FROM billing.invoice_balances") == []  # nothing due, nothing collected
    with engine.begin() as conn:
        _draft(conn, "acme", month="2026-03-01", late_events=("ev-1", "ev-2"))  # billable again
    assert audit(engine, "invoice")[-1] == (str(issued), "voided", "finalized", "void")
    # the void invoice is as immutable as it was
    with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="is void"):
        conn.execute(
            sa.text("UPDATE billing.invoices SET total_minor = 1 WHERE invoice_id = :i"), {"i": issued}
        )
    with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="is issued"):
        conn.execute(sa.text("DELETE FROM billing.invoice_lines WHERE invoice_id = :i"), {"i": issued})
    with pytest.raises(voids.VoidError, match="is void"):
        voids.void_invoice(engine, "INV-2026-000001", reason="again", actor="t")


def test_a_finalized_invoice_still_refuses_every_other_change(engine, issued):
    with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="is finalized"):  # no recorded void
        conn.execute(
            sa.text("UPDATE billing.invoices SET status = 'void' WHERE invoice_id = :i"), {"i": issued}
        )
    with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="is finalized"):
        conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_voids (invoice_id, organisation_id, number, reason, voided_by)"
                " VALUES (:i, 'acme', 'INV-2026-000001', 'r', 't')"
            ),
            {"i": issued},
        )
        conn.execute(
            sa.text("UPDATE billing.invoices SET status = 'void', total_minor = 1 WHERE invoice_id = :i"),
            {"i": issued},
        )


def test_void_with_replacement_issues_a_new_number_with_the_same_lines_and_claims(engine, issued):
    voided = voids.void_invoice(engine, "INV-2026-000001", reason="re-issue", actor="t", replace=True)

    assert voided.replacement_number.startswith("INV-") and voided.replacement_number != "INV-2026-000001"
    (new,) = rows(
        engine, "SELECT * FROM billing.invoices WHERE invoice_id = :i", i=voided.replacement_invoice_id
    )
    assert (new["status"], new["total_minor"], new["period_start"].isoformat()) == (
        "finalized",
        5000,
        "2026-02-01",
    )
    assert rows(engine, "SELECT document_kind, number FROM billing.invoice_documents WHERE invoice_id = :i",
                i=new["invoice_id"]) == [{"document_kind": "invoice", "number": voided.replacement_number}]
    assert rows(
        engine,
        "SELECT count(*) AS n FROM billing.invoice_late_events le JOIN billing.invoice_lines l"
        " USING (line_id) WHERE l.invoice_id = :i",
        i=new["invoice_id"],
    ) == [{"n": 2}]
    with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        _draft(conn, "acme", month="2026-03-01", late_events=("ev-2",))  # the replacement bills it
    (v,) = rows(
        engine,
        "SELECT * FROM billing.invoice_voids JOIN billing.invoice_replacements"
        " ON voided_invoice_id = invoice_id",
    )
    assert (v["replacement_invoice_id"], v["reason"]) == (new["invoice_id"], "re-issue")


def test_a_paid_invoice_cannot_be_voided(engine, issued):
    invoice = {"invoice_id": issued, "total_minor": 5000, "currency": "USD"}
    record_charges(
        engine, stripe_charge(invoice, status="succeeded", at=utc(2026, 3, 2), customer="cus_acme")
    )
    with pytest.raises(voids.VoidError, match="credit note instead"):
        voids.void_invoice(engine, "INV-2026-000001", reason="r", actor="t")
    assert rows(engine, "SELECT status FROM billing.invoices") == [{"status": "finalized"}]


def test_cli_voids_with_a_reason_and_an_actor(engine, issued):
    from typer.testing import CliRunner

    from billing_pipeline.invoicing.cli import invoice_app

    runner = CliRunner()
    ok = runner.invoke(
        invoice_app, ["void", "INV-2026-000001", "--reason", "duplicate", "--actor", "cli:bob", "--replace"]
    )
    assert ok.exit_code == 0, ok.output
    assert "void (2 late events billable again); replaced by INV-2026-000002" in ok.output
    (v,) = rows(engine, "SELECT voided_by, reason FROM billing.invoice_voids")
    assert v == {"voided_by": "cli:bob", "reason": "duplicate"}
    again = runner.invoke(invoice_app, ["void", "INV-2026-000001", "--reason", "x"])
    assert again.exit_code == 1 and "is void" in again.output


def test_an_invoice_whose_collection_is_in_flight_cannot_be_voided(engine, issued):
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO billing.collection_attempts (invoice_id, organisation_id, period_start, number, provider,"
                " method, idempotency_key, amount_minor, currency, status, claimed_at, claimed_by)"
                " VALUES (:i, 'acme', '2026-02-01', 'INV-2026-000001', 'stripe', 'payment_intent', 'collect:' || :i,"
                " 5000, 'USD', 'pending', now(), 't')"
            ),
            {"i": issued},
        )
    with pytest.raises(voids.VoidError, match="being collected"):
        voids.void_invoice(engine, "INV-2026-000001", reason="r", actor="t")


def test_replacement_with_corrected_units_is_priced_again_from_the_voided_invoice(october):
    """org_usd's October: 250 calls (package of 100, 100 free: 4.00), 10,000 tokens (0.0015: 15.00), peak 4
    (3: 12.00) = 31.00, raised to the 50.00 commitment; 10% launch discount, 20% tax, 10.00 of credits.
    Corrected to 40,000 tokens (60.00): 76.00 - 7.60 = 68.40, + 13.68 tax = 82.08, - 10.00 = 72.08."""
    from test_invoicing_support import OCT, close_month, invoices, lines

    close_month(october, OCT)
    old = invoices(october, OCT)["org_usd"]
    assert (old["total_minor"], old["credits_applied_minor"]) == (4400, 1000)
    with pytest.raises(voids.VoidError, match="no charge for 'seats'"):
        voids.void_invoice(october, old["number"], reason="r", actor="t", replace=True,
                           units={"seats": Decimal(3)})  # fmt: skip
    with pytest.raises(voids.VoidError, match="add --replace"):
        voids.void_invoice(october, old["number"], reason="r", actor="t", units={"tokens": Decimal(1)})
    assert invoices(october, OCT)["org_usd"]["status"] == "finalized"  # refused: nothing written

    voided = voids.void_invoice(october, old["number"], reason="tokens were under-counted",
                                actor="cli:finance", replace=True, units={"tokens": Decimal(40000)})  # fmt: skip

    new = invoices(october, OCT)["org_usd"]
    assert new["invoice_id"] == voided.replacement_invoice_id and new["status"] == "finalized"
    assert (new["subtotal_minor"], new["discount_minor"], new["tax_minor"]) == (7600, 760, 1368)
    assert (new["credits_applied_minor"], new["total_minor"]) == (1000, 7208)
    got = lines(october, new["invoice_id"])
    assert got[("usage", "tokens", None)]["units"] == 40000
    assert got[("usage", "tokens", None)]["amount_minor"] == 6000
    assert got[("usage", "api_calls", None)]["amount_minor"] == 400
    assert ("commitment_true_up", None, None) not in got  # 76.00 is above the commitment now
    (entry,) = rows(october, "SELECT detail FROM billing.audit_log WHERE entity_id = :i AND action = 'voided'",
                    i=str(old["invoice_id"]))  # fmt: skip
    assert entry["detail"]["corrected_units"] == {"tokens": "40000"}
    assert entry["detail"]["replacement"] == voided.replacement_number
