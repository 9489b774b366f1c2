"""Drafts: priced right to the minor unit, replaced on re-run, late usage billed once, preview writes nothing."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from test_invoicing_support import (
    DEC,
    NOV,
    OCT,
    close_month,
    event,
    fill_usage,
    ingest,
    invoices,
    lines,
    utc,
)
from typer.testing import CliRunner

from billing_pipeline.invoicing import drafts
from billing_pipeline.invoicing.cli import invoice_app
from billing_pipeline.invoicing.drafts import Charge, OrganisationInput, Usage, price_organisation
from billing_pipeline.invoicing.preview import preview_invoice, render_text

pytest_plugins = ["test_invoicing_support"]  # fixture: october
D = Decimal


def test_drafts_are_priced_to_the_minor_unit_with_commitment_discount_tax_and_credits(october):
    result = drafts.build_drafts(october, OCT, "cli:test")
    got = invoices(october, OCT)
    assert sorted(got) == ["org_eur", "org_idle", "org_jpy", "org_kwd", "org_usd"]
    assert result.summary()["drafts"] == 5

    usd = got["org_usd"]
    # 250 calls: 150 paid, 2 packages of 100 at 2.00; 10,000 tokens x 0.0015; peak 4 x 3.00 -> 31.00;
    # commitment 50.00 -> true-up 19.00; 10 % launch discount; 20 % tax; 10.00 prepaid credits.
    assert (usd["subtotal_minor"], usd["discount_minor"], usd["tax_minor"]) == (5000, 500, 900)
    assert (usd["credits_applied_minor"], usd["total_minor"], usd["currency"]) == (1000, 4400, "USD")
    assert usd["status"] == "draft" and usd["number"] is None
    assert usd["plan_code"] == "usd_plan" and usd["plan_version"] == 1
    assert [c["metric"] for c in usd["plan_snapshot"]["charges"]] == ["api_calls", "peak", "tokens"]
    assert usd["discounts_applied"] == [{"code": "launch", "kind": "percentage", "amount_minor": 500}]
    usd_lines = lines(october, usd["invoice_id"])
    assert {k: (v["units"], v["amount_minor"]) for k, v in usd_lines.items()} == {
        ("usage", "api_calls", None): (D(250), 400),
        ("usage", "tokens", None): (D(10000), 1500),
        ("usage", "peak", None): (D(4), 1200),
        ("commitment_true_up", None, None): (None, 1900),
    }
    assert usd_lines[("usage", "api_calls", None)]["charge"]["model"] == "package"

    # percentage: the first payment is free, then 1.5 % + 0.10 each: 3.85 + 0.70
    assert got["org_eur"]["total_minor"] == 455
    # rounding once per line: 3 x 0.5 JPY = 1.5 -> 2 yen; KWD has three decimals: 1,001 x 0.0005 = 0.5005
    # -> 0.501, and 2 distinct users x 0.25 = 0.500
    assert got["org_jpy"]["total_minor"] == 2
    kwd = lines(october, got["org_kwd"]["invoice_id"])
    assert kwd[("usage", "tokens", None)]["amount_unrounded"] == D("0.5005")
    assert kwd[("usage", "tokens", None)]["amount_minor"] == 501
    assert got["org_kwd"]["total_minor"] == 1001
    # no usage, but a minimum commitment: a true-up-only draft, zero-unit lines for every charge
    idle = lines(october, got["org_idle"]["invoice_id"])
    assert idle[("commitment_true_up", None, None)]["amount_minor"] == 5000
    assert idle[("usage", "tokens", None)]["units"] == 0
    assert got["org_idle"]["total_minor"] == 5000


def test_redrafting_replaces_the_drafts_and_a_closed_month_is_never_drafted_again(october):
    first = drafts.build_drafts(october, OCT, "cli:one")
    before = invoices(october, OCT)
    second = drafts.build_drafts(october, OCT, "cli:two")
    after = invoices(october, OCT)
    assert second.replaced == 5 and first.build_id != second.build_id
    assert {o: i["total_minor"] for o, i in before.items()} == {o: i["total_minor"] for o, i in after.items()}
    assert not set(i["invoice_id"] for i in before.values()) & set(i["invoice_id"] for i in after.values())
    with october.connect() as conn:
        audit = conn.execute(
            sa.text(
                "SELECT action, actor, count(*) FROM billing.audit_log WHERE entity_type = 'invoice'"
                " GROUP BY 1, 2 ORDER BY 1, 2"
            )
        ).all()
        line_count = conn.execute(sa.text("SELECT count(*) FROM billing.invoice_lines")).scalar_one()
    assert audit == [("draft_created", "cli:one", 5), ("draft_created", "cli:two", 5), ("draft_replaced", "cli:two", 5)]
    assert line_count == sum(len(lines(october, i["invoice_id"])) for i in after.values())

    close_month(october, OCT)
    finalized = invoices(october, OCT)
    again = drafts.build_drafts(october, OCT, "cli:three")
    assert again.closed_at is not None and again.build_id is None
    assert invoices(october, OCT) == finalized


def test_late_usage_is_billed_once_on_the_next_invoice_naming_its_month(october):
    october_close = close_month(october, OCT)
    assert len(october_close.invoices) == 5
    ingest(
        october,
        [
            # 60 more calls in October: 310 calls -> 3 paid packages instead of 2: one more package
            *[event(f"late-call-{i}", "org_usd", "api_calls", 1, utc(2026, 10, 20), utc(2026, 11, 3)) for i in range(60)],
            # a peak below October's max of 4 adds nothing, but is recorded as billed
            event("late-peak", "org_usd", "peak", 3, utc(2026, 10, 21), utc(2026, 11, 3)),
            # November's own usage
            event("nov-tok", "org_usd", "tokens", 40000, utc(2026, 11, 2), utc(2026, 11, 2)),
        ],
    )
    fill_usage(october, NOV)
    drafts.build_drafts(october, NOV, "cli:test")
    nov = invoices(october, NOV)["org_usd"]
    nov_lines = lines(october, nov["invoice_id"])
    calls = nov_lines[("late_usage", "api_calls", OCT)]
    assert (calls["units"], calls["amount_unrounded"], calls["amount_minor"]) == (D(60), D(2), 200)
    assert D(calls["charge"]["units_billed_before"]) == 250 and D(calls["charge"]["units_total"]) == 310
    peak = nov_lines[("late_usage", "peak", OCT)]
    assert (peak["units"], peak["amount_minor"]) == (D(0), 0)
    # the usage subtotal (tokens 60.00 + zero-unit lines) is above the commitment: no true-up; late
    # usage does not count toward the commitment
    assert nov_lines[("usage", "tokens", None)]["amount_minor"] == 6000
    assert ("commitment_true_up", None, None) not in nov_lines
    assert nov["subtotal_minor"] == 6200
    with october.connect() as conn:
        covered = conn.execute(
            sa.text(
                "SELECT l.metric, count(*) FROM billing.invoice_late_events e"
                " JOIN billing.invoice_lines l ON l.line_id = e.line_id GROUP BY 1 ORDER BY 1"
            )
        ).all()
    assert covered == [("api_calls", 60), ("peak", 1)]

    # Drafting November again bills the same late events once (the replaced draft's claim is released).
    drafts.build_drafts(october, NOV, "cli:test")
    again = lines(october, invoices(october, NOV)["org_usd"]["invoice_id"])
    assert again[("late_usage", "api_calls", OCT)]["amount_minor"] == 200

    # After November is finalized, December has nothing left to bill for October.
    close_month(october, NOV)
    drafts.build_drafts(october, DEC, "cli:test")
    december = invoices(october, DEC)
    assert "org_usd" not in december or not any(
        k[0] == "late_usage" for k in lines(october, december["org_usd"]["invoice_id"])
    )
    # ... and a new late October event is billed from where the late line left off: 310 -> 311 calls
    # stays within the third package.
    ingest(october, [event("later-call", "org_usd", "api_calls", 1, utc(2026, 10, 22), utc(2026, 12, 2))])
    drafts.build_drafts(october, DEC, "cli:test")
    dec_lines = lines(october, invoices(october, DEC)["org_usd"]["invoice_id"])
    assert (dec_lines[("late_usage", "api_calls", OCT)]["units"], dec_lines[("late_usage", "api_calls", OCT)]["amount_minor"]) == (D(1), 0)


def test_a_charge_that_cannot_be_priced_is_a_problem_on_the_draft_not_a_silent_zero(october):
    with october.begin() as conn:  # a catalog row the catalog itself would refuse
        conn.execute(
            sa.text(
                "UPDATE billing.plan_charges SET properties = '{\"unit_amount\": \"-1\"}' WHERE metric_code = 'peak'"
            )
        )
    drafts.build_drafts(october, OCT, "cli:test")
    usd = invoices(october, OCT)["org_usd"]
    assert usd["problems"] == [{"metric": "peak", "reason": "standard charge: unit_amount must be >= 0, got -1"}]
    assert ("usage", "peak", None) not in lines(october, usd["invoice_id"])


def test_preview_prices_like_the_draft_and_writes_nothing(october):
    def counts():
        with october.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM billing.invoices), (SELECT count(*) FROM billing.audit_log),"
                    " (SELECT count(*) FROM billing.invoice_draft_builds)"
                )
            ).one()

    before = counts()
    preview = preview_invoice(october, "org_usd", OCT)
    assert counts() == before
    assert preview.draft.total_minor == 4400 and preview.would_be_drafted
    text = render_text(preview)
    assert "org_usd" in text and "44.00 USD" in text and "minimum commitment true-up" in text

    drafts.build_drafts(october, OCT, "cli:test")
    assert invoices(october, OCT)["org_usd"]["total_minor"] == preview.draft.total_minor

    runner = CliRunner()
    ok = runner.invoke(invoice_app, ["preview", "--org", "org_kwd", "--month", "2026-10"])
    assert ok.exit_code == 0, ok.output
    assert "1.001 KWD" in ok.output
    as_json = runner.invoke(invoice_app, ["preview", "--org", "org_jpy", "--month", "2026-10", "--json"])
    assert '"total_minor": 2' in as_json.output
    unknown = runner.invoke(invoice_app, ["preview", "--org", "nobody", "--month", "2026-10"])
    assert unknown.exit_code == 1 and "no organisation 'nobody'" in unknown.output
    bad = runner.invoke(invoice_app, ["preview", "--org", "org_usd", "--month", "2026-13"])
    assert bad.exit_code == 2 and "expected YYYY-MM" in bad.output


amounts = st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    units=st.lists(amounts, min_size=3, max_size=3),
    tax=st.decimals(min_value=0, max_value=D("0.3"), places=4),
    credits=st.integers(min_value=0, max_value=10**8),
    commitment=st.one_of(st.none(), amounts),
    discount=st.decimals(min_value=0, max_value=100, places=2),
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
)
def test_every_draft_total_is_subtotal_minus_discount_plus_tax_minus_credits(
    units, tax, credits, commitment, discount, currency
):
    org = OrganisationInput(
        organisation_id="org",
        currency=currency,
        tax_rate=tax,
        discounts=[{"code": "d", "kind": "percentage", "value": str(discount), "valid_from": "2026-01-01"}],
        existed_in_period=True,
        credits_available_minor=credits,
        plan_id=1,
        plan_code="p",
        plan_version=1,
        minimum_commitment=commitment,
        plan_definition={},
        charges=(
            Charge("a", "sum", "standard", {"unit_amount": "0.0137"}),
            Charge("b", "sum", "package", {"package_size": "7", "amount": "1.5", "free_units": "3"}),
            Charge("c", "sum", "percentage", {"rate": "2.5"}),
        ),
    )
    usage = {m: Usage(u) for m, u in zip("abc", units)}
    draft = price_organisation(org, usage, [], OCT)
    assert draft.problems == []
    assert draft.total_minor == draft.subtotal_minor - draft.discount_minor + draft.tax_minor - draft.credits_applied_minor
    assert draft.total_minor >= 0 and 0 <= draft.discount_minor <= draft.subtotal_minor
    assert draft.subtotal_minor == sum(line.amount_minor for line in draft.lines)
    assert draft.credits_applied_minor <= credits


def test_late_lines_bill_what_the_rounded_month_total_still_owes():
    """Billed 6 units at 0.001 (0.006: 1 cent); the month now has 13 (0.013: still 1 cent). Rounding
    the unrounded difference (0.007) would bill a second cent; the month owes nothing more."""
    charge = drafts.Charge("api_calls", "count", "standard", {"unit_amount": "0.001"})
    item = drafts.LateUsage(
        organisation_id="org_usd", metric="api_calls", original_period_start=OCT, units_total=D(13),
        units_billed=D(6), amount_billed=D("0.006"), amount_billed_minor=1, currency="USD", charge=charge,
        original_invoice_number="INV-2026-000001",
    )
    line, amount = drafts._late_line(item)
    assert (amount, line.units) == (D(0), D(7))
    more = drafts._late_line(replace(item, units_total=D(16)))[1]  # 0.016 rounds to 2 cents: 1 more
    assert more == D("0.01")
