"""Credit notes against finalized invoices: gap-free numbers, immutability, never more than creditable,
lowering the amount due, refunds through the FAKE Stripe/Razorpay servers (idempotent on the credit
note) or to the wallet, and reconciliation that knows those refunds."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, date, datetime, timedelta

import pytest
from pypdf import PdfReader
import sqlalchemy as sa
from test_accounts_support import (
    add_invoice,
    add_org,
    add_plan,
    audit,
    record_charges,
    rows,
    stripe_charge,
    utc,
)
from test_payments_support import RZP_ID, RZP_SECRET
from test_payments_support import SK as PAYMENTS_SK

from billing_pipeline.invoicing import credit_notes
from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import razorpay_observation
from billing_pipeline.payments.reconciliation import reconcile_payments
from billing_pipeline.payments.settlement import settle_invoices
from billing_pipeline.payments.sync import sync_stripe
from billing_pipeline.providers import razorpay_api, stripe_api

pytest_plugins = ["test_accounts_support", "test_payments_support"]


def _invoice(engine, org="acme", total=10000, **kw) -> dict:
    with engine.begin() as conn:
        add_org(conn, org, add_plan(conn, f"plan_{org}", currency=kw.get("currency", "USD")), **kw)
        return add_invoice(conn, org, total)


def _balance(engine, invoice) -> dict:
    (b,) = rows(
        engine, "SELECT * FROM billing.invoice_balances WHERE invoice_id = :i", i=invoice["invoice_id"]
    )
    return b


def test_credit_notes_lower_the_amount_due_are_numbered_gap_free_and_never_exceed_the_invoice(engine):
    invoice = _invoice(engine, customer="cus_a")
    first = credit_notes.issue(
        engine, invoice["number"], reason="outage credit", actor="cli:finance", amount_minor=3000
    )
    assert (first.applied_minor, first.refund_minor, first.refund_method) == (3000, 0, None)
    assert _balance(engine, invoice)["balance_minor"] == 7000

    with pytest.raises(credit_notes.CreditNoteError, match="more than remains creditable \\(7000\\)"):
        credit_notes.issue(engine, invoice["number"], reason="too much", actor="t", amount_minor=7001)
    with pytest.raises(credit_notes.CreditNoteError, match="needs a reason"):
        credit_notes.issue(engine, invoice["number"], reason=" ", actor="t", amount_minor=1)
    rest = credit_notes.issue(engine, invoice["number"], reason="goodwill", actor="t")  # the whole remainder
    assert rest.amount_minor == 7000
    year = date.today().year
    assert [first.number, rest.number] == [f"CN-{year}-000001", f"CN-{year}-000002"]  # no gap for the refusal
    b = _balance(engine, invoice)
    assert (b["balance_minor"], b["credited_minor"], b["settlement_state"]) == (0, 10000, "paid")
    with pytest.raises(credit_notes.CreditNoteError, match="nothing left to credit"):
        credit_notes.issue(engine, invoice["number"], reason="again", actor="t")
    assert [a[1] for a in audit(engine, "credit_note")] == ["issued", "document_rendered"] * 2

    with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError):
        conn.execute(sa.text("UPDATE billing.credit_notes SET amount_minor = 1"))
    with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError):
        conn.execute(sa.text("DELETE FROM billing.credit_note_lines"))
    # the database refuses an over-credit whoever writes it
    with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="more than its total"):
        conn.execute(
            sa.text(
                "INSERT INTO billing.credit_notes (number, invoice_id, organisation_id, currency, amount_minor,"
                " applied_minor, refund_minor, reason, scope, issued_by) VALUES ('X-1', :i, 'acme', 'USD', 1, 1, 0,"
                " 'r', 'amount', 't')"
            ),
            {"i": invoice["invoice_id"]},
        )


def test_credit_of_chosen_lines_adds_the_invoice_tax(engine):
    with engine.begin() as conn:
        add_org(conn, "taxed", add_plan(conn, "plan_taxed"))
        build = conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_draft_builds (build_id, period_start, built_by, draft_count)"
                " VALUES (gen_random_uuid(), '2026-02-01', 't', 1) RETURNING build_id"
            )
        ).scalar_one()
        invoice_id = conn.execute(
            sa.text("""
            INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, plan_id, plan_code,
                plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor,
                credits_applied_minor, total_minor, build_id, created_by)
            SELECT 'taxed', '2026-02-01', '2026-03-01', 'USD', plan_id, 'plan_taxed', 1, '{}', 0.18, 6001, 0,
                   1080, 0, 7081, :b, 't'
            FROM billing.plans WHERE code = 'plan_taxed' RETURNING invoice_id"""),
            {"b": build},
        ).scalar_one()
        api, tokens = (
            conn.execute(
                sa.text(
                    "INSERT INTO billing.invoice_lines (invoice_id, kind, metric, amount_unrounded, amount_minor)"
                    " VALUES (:i, 'usage', :m, :a, :a) RETURNING line_id"
                ),
                {"i": invoice_id, "m": metric, "a": amount},
            ).scalar_one()
            for metric, amount in (("api_calls", 4000), ("tokens", 2001))
        )
        conn.execute(
            sa.text(
                "UPDATE billing.invoices SET status = 'finalized', number = 'INV-TAX-1', finalized_at = now(),"
                " finalized_by = 't' WHERE invoice_id = :i"
            ),
            {"i": invoice_id},
        )

    tokens_note = credit_notes.issue(
        engine, "INV-TAX-1", reason="tokens overcounted", actor="t", line_ids=[tokens]
    )
    assert tokens_note.amount_minor == 2361  # 2001 + 18 % (360.18), rounded once, half-up
    assert tokens_note.lines == [
        {"invoice_line_id": tokens, "amount_minor": 2361, "description": "usage tokens"}
    ]
    with pytest.raises(credit_notes.CreditNoteError, match="already fully credited"):
        credit_notes.issue(engine, "INV-TAX-1", reason="again", actor="t", line_ids=[tokens])
    rest = credit_notes.issue(engine, "INV-TAX-1", reason="api overcounted", actor="t", line_ids=[api])
    assert rest.amount_minor == 4720
    (b,) = rows(engine, "SELECT * FROM billing.invoice_balances WHERE invoice_id = :i", i=invoice_id)
    assert (b["credited_minor"], b["balance_minor"]) == (7081, 0)

    # each credit note is rendered once to a PDF with its sha256, like an invoice
    docs = rows(engine, "SELECT number, sha256, pdf, total_minor FROM billing.invoice_documents"
                        " WHERE document_kind = 'credit_note' ORDER BY number")
    assert [(d["number"], d["total_minor"]) for d in docs] == [(tokens_note.number, 2361), (rest.number, 4720)]
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(bytes(docs[0]["pdf"]))).pages)
    assert tokens_note.number in text and "INV-TAX-1" in text and "usage tokens" in text and "23.61" in text
    assert hashlib.sha256(bytes(docs[0]["pdf"])).hexdigest() == docs[0]["sha256"]


def test_a_paid_invoice_needs_a_refund_choice_and_the_wallet_gets_the_credit(engine):
    invoice = _invoice(engine, customer="cus_w")
    record_charges(engine, stripe_charge(invoice, status="succeeded", at=utc(2026, 3, 2), customer="cus_w"))
    with pytest.raises(credit_notes.CreditNoteError, match="choose --refund"):
        credit_notes.issue(engine, invoice["number"], reason="r", actor="t", amount_minor=2500)
    note = credit_notes.issue(
        engine, invoice["number"], reason="r", actor="t", amount_minor=2500, refund="wallet"
    )
    assert (note.applied_minor, note.refund_minor, note.refund["status"]) == (0, 2500, "succeeded")
    assert rows(engine, "SELECT balance_minor FROM billing.wallets WHERE organisation_id = 'acme'") == [
        {"balance_minor": 2500}
    ]
    b = _balance(engine, invoice)
    assert (b["balance_minor"], b["settlement_state"]) == (0, "paid")


def test_stripe_refund_is_idempotent_on_the_credit_note_and_reconciliation_knows_it(engine, providers):
    stripe_state, _ = providers
    client = stripe_api.make_client(PAYMENTS_SK, os.environ["STRIPE_API_BASE"])
    invoice = _invoice(engine, customer="cus_s")
    charge = stripe_state.add_charge(
        10000, "usd", customer="cus_s", metadata={"invoice_id": str(invoice["invoice_id"])}
    )
    record_charges(engine, charge)
    note = credit_notes.issue(
        engine, invoice["number"], reason="service credit", actor="t", amount_minor=4000, refund="provider"
    )
    assert (
        note.refund["status"] == "pending"
        and note.refund["idempotency_key"] == f"credit_note:{note.credit_note_id}"
    )

    (sent,) = credit_notes.send_refunds(engine, stripe_client=client, razorpay_client=None, actor="t")
    assert sent["status"] == "succeeded"
    # sent again (as after a crash before the recording): Stripe replays, no second refund
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE billing.refunds SET status = 'pending', completed_at = NULL"))
    credit_notes.send_refunds(engine, stripe_client=client, razorpay_client=None, actor="t")
    assert len(stripe_state.all("refunds")) == 1 and stripe_state.all("refunds")[0]["amount"] == 4000
    posts = stripe_state.requests_to("/v1/refunds", "POST")
    assert {p.idempotency_key for p in posts} == {f"credit_note:{note.credit_note_id}"} and len(posts) == 2

    b = _balance(engine, invoice)
    assert (b["paid_minor"], b["credited_minor"], b["refunded_minor"], b["balance_minor"]) == (
        10000,
        4000,
        4000,
        0,
    )
    # the day's sync and reconciliation: the credit note's refund is not a finding
    day = date.fromtimestamp(charge["created"])
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    sync_stripe(engine, client, start, start + timedelta(days=1), actor="t")
    with engine.begin() as conn:
        settle_invoices(conn, actor="t")
        reconcile_payments(conn, day, day + timedelta(days=1))
    assert _balance(engine, invoice)["balance_minor"] == 0
    findings = rows(engine, "SELECT kind, reference, detail FROM recon.discrepancies")
    refund_id = stripe_state.all("refunds")[0]["id"]
    assert [f for f in findings if f["reference"] in (refund_id, invoice["number"])] == []


def test_razorpay_refund_is_found_not_made_twice(engine, providers):
    _, rzp_state = providers
    client = razorpay_api.make_client(RZP_ID, RZP_SECRET, os.environ["RAZORPAY_API_BASE"])
    invoice = _invoice(engine, "ind", 50000, provider="razorpay", currency="INR")
    payment = rzp_state.add_payment(50000, notes={"invoice_id": str(invoice["invoice_id"])})
    with engine.begin() as conn:
        apply_observations(conn, [Seen(razorpay_observation(payment))], via="webhook", actor="t")
        settle_invoices(conn, actor="t")
    note = credit_notes.issue(
        engine, invoice["number"], reason="r", actor="t", amount_minor=10000, refund="provider"
    )
    credit_notes.send_refunds(engine, stripe_client=None, razorpay_client=client, actor="t")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE billing.refunds SET status = 'pending', completed_at = NULL"))
    credit_notes.send_refunds(engine, stripe_client=None, razorpay_client=client, actor="t")
    refunds = [r for r in rzp_state.refunds_of(payment["id"])["items"]]
    assert len(refunds) == 1 and refunds[0]["notes"]["credit_note_id"] == str(note.credit_note_id)
    assert _balance(engine, invoice)["balance_minor"] == 0


# the payments support fixture's credentials and URLs
def test_cli_credits_an_amount_with_its_actor_and_refuses_too_much(engine):
    from typer.testing import CliRunner

    from billing_pipeline.invoicing.cli import invoice_app

    invoice = _invoice(engine)
    runner = CliRunner()
    ok = runner.invoke(
        invoice_app,
        [
            "credit",
            invoice["number"],
            "--amount",
            "12.50",
            "--reason",
            "late delivery",
            "--actor",
            "cli:alice",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "1250" not in ok.output and "12.50 USD credited" in ok.output
    assert _balance(engine, invoice)["balance_minor"] == 10000 - 1250
    (entry,) = rows(engine, "SELECT actor, detail FROM billing.audit_log"
                            " WHERE entity_type = 'credit_note' AND action = 'issued'")
    assert entry["actor"] == "cli:alice" and entry["detail"]["reason"] == "late delivery"
    bad = runner.invoke(invoice_app, ["credit", invoice["number"], "--amount", "1000", "--reason", "x"])
    assert bad.exit_code == 1 and "more than remains creditable" in bad.output
    precise = runner.invoke(invoice_app, ["credit", invoice["number"], "--amount", "0.001", "--reason", "x"])
    assert precise.exit_code != 0 and "more decimals" in precise.output


def test_a_refund_left_pending_is_sent_once_by_send_refunds(engine, providers):
    from typer.testing import CliRunner

    from billing_pipeline.invoicing.cli import invoice_app

    stripe_state, _ = providers
    invoice = _invoice(engine, customer="cus_p")
    charge = stripe_state.add_charge(
        10000, "usd", customer="cus_p", metadata={"invoice_id": str(invoice["invoice_id"])}
    )
    record_charges(engine, charge)
    # the CLI issues and sends; the provider is unreachable, so the refund stays pending
    unreachable = CliRunner().invoke(
        invoice_app,
        ["credit", invoice["number"], "--amount", "30", "--reason", "r", "--refund", "provider"],
        env={"STRIPE_API_BASE": "http://127.0.0.1:9"},
    )
    assert unreachable.exit_code == 0, unreachable.output
    assert "refund pending" in unreachable.output and stripe_state.all("refunds") == []

    sent = CliRunner().invoke(invoice_app, ["send-refunds", "--actor", "cli:ops"])
    again = CliRunner().invoke(invoice_app, ["send-refunds"])

    assert sent.exit_code == 0 and "succeeded" in sent.output, sent.output
    assert "0 pending refunds sent" in again.output
    (refund,) = stripe_state.all("refunds")
    assert refund["amount"] == 3000 and refund["metadata"]["credit_note_number"].startswith("CN-")
    assert rows(engine, "SELECT status FROM billing.refunds") == [{"status": "succeeded"}]
