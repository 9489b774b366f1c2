"""`make demo` end to end on a small month: every asset runs, invoices finalize, finance sees every kind
of payment and call finding, and running it again changes nothing."""

from datetime import date

import pytest
import sqlalchemy as sa

from billing_pipeline.demo import generate
from billing_pipeline.demo.collection import collection_states
from billing_pipeline.demo.run import run_demo

PAYMENT_KINDS = {"missing_internal", "missing_at_provider", "amount_mismatch", "status_mismatch", "duplicate"}


def test_generated_month_has_every_kind_of_row():
    plan = generate.generate(date(2026, 10, 1), events=4000)
    metrics = {row[3] for row in plan.rows}
    assert metrics == set(generate._METRIC_MIX)
    assert set(plan.malformed) == {
        "bad_quantity", "bad_occurred_at", "unknown_organisation", "negative_quantity", "malformed_properties"
    }
    assert plan.late > 0 and plan.repeats > 0
    assert len({row[1] for row in plan.rows if not row[1].startswith("org_ghost")}) == 50
    assert generate.generate(date(2026, 10, 1), events=4000).rows == plan.rows  # deterministic


@pytest.mark.slow
def test_demo_runs_every_asset_and_is_safe_to_rerun(settings, engine):
    steps = []
    first = run_demo(settings, date(2026, 10, 1), 3000, steps.append)
    assert all(run.success for run in first["runs"]), first["runs"]
    assert [run.label for run in first["runs"]] == [
        "unpartitioned", "hourly", "daily", "monthly", "webhook_inbox_job", "daily_reconciliation_job",
        "daily_accounts_job", "payment_collection",
    ]
    counts = first["counts"]
    assert counts["billing.events"] == 3000 + 50  # and each organisation's opening storage level
    assert counts["billing.quarantined_events"] == 100
    assert counts["billing.organisations"] == 50
    assert (settings.home_dir / "demo-catalog.yaml").exists()
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.text("SELECT status, count(*) FROM billing.invoices GROUP BY 1")).all())
        kinds = set(conn.execute(sa.text(
            "SELECT kind FROM recon.discrepancies WHERE source = 'payment_reconciliation'")).scalars())
        missing_calls = conn.execute(sa.text(
            "SELECT count(*) FROM recon.discrepancies WHERE kind = 'missing_call'")).scalar_one()
    assert statuses == {"finalized": 50, "void": 1}  # one voided and replaced
    assert kinds == PAYMENT_KINDS
    assert missing_calls > 0
    # the month ends with every invoice collected, in dunning, or waiting on a link
    states = collection_states(engine, date(2026, 10, 1))
    assert set(states) == {"void", "collected", "in dunning", "waiting on a payment link"}, states
    assert states["void"] == 1 and states["in dunning"] == 2
    assert counts["billing.credit_notes"] == 1 and counts["billing.invoice_voids"] == 1
    assert any(step.startswith("credit note: CN-") for step in steps)
    assert counts["billing.invoice_documents"] == 52  # a PDF per finalized invoice (the replacement too) and credit note
    with engine.connect() as conn:
        open_findings = dict(conn.execute(sa.text(
            "SELECT source, count(*) FROM recon.findings WHERE status = 'open' GROUP BY 1")).all())
    assert open_findings.get("payment_reconciliation", 0) > 0 and open_findings.get("call_reconciliation", 0) > 0

    second = run_demo(settings, date(2026, 10, 1), 3000, steps.append)
    assert all(run.success for run in second["runs"])
    assert second["counts"] == first["counts"]
    assert any(step.startswith("edge store: 0 new rows") for step in steps)
