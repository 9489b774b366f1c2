"""Payment reconciliation on a generated dataset finds exactly the injected discrepancies."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from test_payments_support import add_customers, add_invoices
from typer.testing import CliRunner

from billing_pipeline.utc import utc_midnight
from billing_pipeline.payments import handlers, inbox, reconciliation, settlement, sync
from billing_pipeline.payments.cli import recon_app
from billing_pipeline.payments.demo import INJECTED, seed_demo_payments
from billing_pipeline.settings import load_settings

pytest_plugins = ["test_payments_support"]  # fixtures: providers, receiver
pytestmark = pytest.mark.slow
DAYS = [date(2026, 11, 9), date(2026, 11, 10), date(2026, 11, 11)]
START, END = DAYS[0], DAYS[-1] + timedelta(days=1)


def _dataset(engine, stripe_orgs=40, razorpay_orgs=30):
    orgs = {
        f"org_s{n:03d}": ("stripe", f"cus_{n:03d}", "USD" if n % 3 else "EUR") for n in range(stripe_orgs)
    }
    orgs |= {f"org_r{n:03d}": ("razorpay", f"cust_{n:03d}", "INR") for n in range(razorpay_orgs)}
    add_customers(engine, orgs)
    return add_invoices(engine, [(org, 1000 + 137 * n) for n, org in enumerate(orgs)])


def _run(engine, start=START, end=END):
    settings = load_settings()
    inbox.process_inbox(engine, handlers.PROVIDERS, actor="run:test")
    start_at, end_at = (utc_midnight(d) for d in (start, end))
    sync.sync_stripe(engine, sync.stripe_client(settings), start_at, end_at, actor="run:test")
    sync.sync_razorpay(engine, sync.razorpay_client(settings), start_at, end_at, actor="run:test")
    with engine.begin() as conn:
        settlement.settle_invoices(conn, actor="run:test")
        return reconciliation.reconcile_payments(conn, start, end)


def _findings(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT recon_date, kind, provider, reference, internal_amount_minor, provider_amount_minor,"
                " currency, detail FROM recon.discrepancies WHERE source = 'payment_reconciliation'"
                " ORDER BY discrepancy_id"
            )
        ).all()


def test_reconciliation_finds_exactly_the_injected_discrepancies(providers, receiver, engine):
    stripe_state, rzp_state = providers
    url, _ = receiver
    _dataset(engine)
    seeded = seed_demo_payments(
        engine,
        stripe_state,
        rzp_state,
        month=date(2026, 10, 1),
        days=DAYS,
        webhook_url=url,
        injections=dict.fromkeys(INJECTED, 2),
        seed=11,
    )
    assert seeded.days == DAYS and seeded.webhooks_delivered > 60

    result = _run(engine)

    found = _findings(engine)
    assert Counter((f.kind, f.provider, f.reference) for f in found) == Counter(
        (e.kind, e.provider, e.reference) for e in seeded.expected
    )
    assert {f.kind for f in found} == {
        "missing_internal",
        "missing_at_provider",
        "amount_mismatch",
        "status_mismatch",
        "duplicate",
    }
    assert result.findings == len(found) == len(seeded.expected) == 2 * 2 * 6 + 2  # Stripe: refund and charge
    assert all(f.recon_date in DAYS and f.currency in ("USD", "EUR", "INR") and f.detail for f in found)
    with engine.connect() as conn:  # refunds name no customer: their charge's organisation is theirs
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM recon.discrepancies WHERE organisation_id IS NULL"
                    " OR organisation_id NOT LIKE 'org_%'"
                )
            ).scalar_one()
            == 0
        )
    by_kind = {(f.kind, f.provider): f for f in found}
    assert by_kind[("missing_internal", "stripe")].internal_amount_minor is None
    assert by_kind[("missing_at_provider", "razorpay")].provider_amount_minor is None
    mismatch = next(f for f in found if f.kind == "amount_mismatch" and f.reference.startswith("ch_"))
    assert mismatch.provider_amount_minor < mismatch.internal_amount_minor

    totals = Counter()
    for t in result.totals:
        totals[t["outcome"]] += t["records"]
    assert totals["matched"] > 50 and totals["duplicate"] == 4 and totals["missing_at_provider"] == 4
    assert {t["provider"] for t in result.totals if t["outcome"] == "matched"} == {"stripe", "razorpay"}
    assert len(result.largest) == 10
    summary, largest = reconciliation.markdown(result)
    assert summary.count("\n") == len(result.totals) + 1 and "| matched | razorpay | INR |" in summary
    assert largest.startswith("| day | kind |") and largest.count("\n") == 11

    rerun = _run(engine)  # syncs, settlement and reconciliation again: the same rows, nothing new
    assert sorted(f[:7] for f in _findings(engine)) == sorted(f[:7] for f in found)
    assert rerun.totals == result.totals


def test_a_day_without_a_sync_is_refused_and_a_clean_day_has_no_findings(providers, engine):
    stripe_state, rzp_state = providers
    invoices = _dataset(engine, stripe_orgs=8, razorpay_orgs=0)
    seed_demo_payments(engine, stripe_state, rzp_state, month=date(2026, 10, 1), days=DAYS[:1], injections={})
    inbox.process_inbox(engine, handlers.PROVIDERS, actor="run:test")
    with (
        engine.begin() as conn,
        pytest.raises(reconciliation.ReconciliationError, match="no provider sync covers stripe 2026-11-09"),
    ):
        reconciliation.reconcile_payments(conn, START, START + timedelta(days=1))

    result = _run(engine, START, START + timedelta(days=1))

    assert result.findings == 0 and _findings(engine) == []
    assert [t["outcome"] for t in result.totals] == ["matched", "matched"]  # USD and EUR
    assert sum(t["records"] for t in result.totals) >= len(invoices) * 6 // 7
    assert reconciliation.markdown(result)[1] == "No findings."


def test_recon_export_writes_the_days_findings_of_every_source_as_csv(engine, tmp_path):
    with engine.begin() as conn:
        conn.execute(
            sa.text("""
            INSERT INTO recon.discrepancies (recon_date, source, kind, provider, organisation_id, reference,
                internal_amount_minor, provider_amount_minor, currency, detail)
            VALUES ('2026-11-10', 'payment_reconciliation', 'amount_mismatch', 'stripe', 'org_1', 'ch_1',
                    12345, 12000, 'USD', 'recorded 12345 USD, the provider has 12000 USD'),
                   ('2026-11-10', 'event_reconciliation', 'missing_event', NULL, 'org_2', 'evt_9', NULL, NULL,
                    NULL, 'edge event missing'),
                   ('2026-11-10', 'payment_reconciliation', 'duplicate', 'razorpay', 'org_3', 'pay_2', 50000,
                    50000, 'JPY', 'paid, twice'),
                   ('2026-11-11', 'payment_reconciliation', 'duplicate', 'stripe', 'org_1', 'ch_9', 1, 1,
                    'USD',
                    'another day')
        """)
        )
    runner = CliRunner()

    stdout = runner.invoke(recon_app, ["export", "--date", "2026-11-10"])
    target = tmp_path / "findings.csv"
    to_file = runner.invoke(recon_app, ["export", "--date", "2026-11-10", "--out", str(target)])
    bad = runner.invoke(recon_app, ["export", "--date", "10/11/2026"])

    assert stdout.exit_code == 0 and to_file.exit_code == 0 and bad.exit_code != 0
    rows = list(csv.DictReader(io.StringIO(stdout.stdout)))
    assert rows == list(csv.DictReader(target.open()))
    assert [(r["source"], r["kind"], r["reference"]) for r in rows] == [
        ("event_reconciliation", "missing_event", "evt_9"),
        ("payment_reconciliation", "amount_mismatch", "ch_1"),
        ("payment_reconciliation", "duplicate", "pay_2"),
    ]
    assert (rows[1]["internal_amount_minor"], rows[1]["internal_amount"], rows[1]["provider_amount"]) == (
        "12345",
        "123.45",
        "120.00",
    )
    assert (rows[2]["provider_amount"], rows[0]["internal_amount"], rows[0]["currency"]) == ("50000", "", "")
    assert "3 finding(s) for 2026-11-10" in to_file.output
