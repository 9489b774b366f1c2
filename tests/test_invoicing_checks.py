"""The checks that gate finalization: each fails on its own kind of bad data, naming the organisations."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from test_invoicing_support import CATALOG, NOV, OCT, close_month, event, fill_usage, ingest, october_events, setup_catalog, utc

from billing_pipeline import edge_store
from billing_pipeline.invoicing import checks, drafts, expectations, finalize
from billing_pipeline.settings import load_settings

pytest_plugins = ["test_invoicing_support"]  # fixture: october


def sql_checks(engine, period_start=OCT) -> dict[str, checks.CheckOutcome]:
    with edge_store.opened(load_settings().edge_path) as edge:
        build, outcomes = checks.run_sql_checks(engine, edge, period_start)
    checks.record_outcomes(engine, build, outcomes, "cli:test")
    return {o.name: o for o in outcomes}


def rules(engine, period_start=OCT) -> checks.CheckOutcome:
    build, outcome = expectations.validate_build(engine, period_start)
    checks.record_outcomes(engine, build, [outcome], "cli:test")
    return outcome


def test_a_clean_month_passes_every_check(october):
    drafts.build_drafts(october, OCT, "cli:test")
    outcomes = sql_checks(october)
    assert {name: o.passed for name, o in outcomes.items()} == {
        name: True for name in checks.SQL_CHECKS + (checks.TOTAL_JUMP,)
    }
    assert outcomes[checks.MIGRATION_COMPLETE].stats["edge_rows_read"] == len(october_events())
    outcome = rules(october)
    assert outcome.passed, outcome.findings
    assert outcome.stats["drafts"] == 5 and outcome.stats["expectations"] > 20


def test_migration_complete_names_the_organisations_with_edge_events_missing(october):
    path = load_settings().edge_path
    with edge_store.opened(path) as edge:
        edge_store.insert_events(
            edge,
            [
                # not moved yet; occurred 01:00 at +02:00 on Nov 1st is Oct 31st 23:00 UTC: October's
                event("waiting", "org_eur", "payments", 5, utc(2026, 10, 31, 23), utc(2026, 10, 31, 23))[:5]
                + ("2026-11-01T01:00:00+02:00", edge_store.utc_text(utc(2026, 10, 31, 23)), None),
                # marked processed, but the warehouse never got it
                event("lost", "org_jpy", "api_calls", 1, utc(2026, 10, 30), utc(2026, 10, 30)),
                # November's: not this month's business
                event("november", "org_kwd", "tokens", 1, utc(2026, 11, 1, 0, 30), utc(2026, 11, 1, 0, 30)),
            ],
        )
        lost = edge.execute("SELECT rowid FROM events WHERE event_id = 'lost'").fetchone()[0]
        edge_store.mark_processed(edge, [lost])
    drafts.build_drafts(october, OCT, "cli:test")
    with edge_store.opened(path) as edge:  # received after the drafts were built: outside the check
        edge_store.insert_events(edge, [event("after", "org_usd", "tokens", 1, utc(2026, 10, 30), utc(2030, 1, 1))])
    outcome = sql_checks(october)[checks.MIGRATION_COMPLETE]
    assert not outcome.passed
    assert outcome.organisations == ["org_eur", "org_jpy"]
    assert {f["organisation_id"]: (f["not_moved"], f["lost"]) for f in outcome.findings} == {
        "org_eur": (1, 0),
        "org_jpy": (0, 1),
    }
    assert "not moved to the warehouse yet" in outcome.findings[0]["reason"]


def test_usage_matches_events_catches_a_wrong_model_and_a_stale_draft(october):
    drafts.build_drafts(october, OCT, "cli:test")
    with october.begin() as conn:
        conn.execute(
            sa.text("UPDATE usage.usage_period SET units = units + 1 WHERE organisation_id = 'org_usd' AND metric = 'tokens'")
        )
    outcome = sql_checks(october)[checks.USAGE_MATCHES_EVENTS]
    assert not outcome.passed and outcome.organisations == ["org_usd"]
    assert {(f["metric"], f["reason"]) for f in outcome.findings} == {
        ("tokens", "units differ from the raw events"),
        ("tokens", "draft line units differ from the usage model (the draft is stale)"),
    }

    # the model rebuilt with a new event (right again) but the drafts were built before: stale
    ingest(october, [event("new", "org_jpy", "api_calls", 1, utc(2026, 10, 29))])
    fill_usage(october, OCT)
    outcome = sql_checks(october)[checks.USAGE_MATCHES_EVENTS]
    assert outcome.organisations == ["org_jpy"]
    assert outcome.findings[0]["reason"] == "draft line units differ from the usage model (the draft is stale)"


def test_lines_drafts_and_pricing_checks_name_organisation_and_reason(october):
    with october.begin() as conn:  # a plan row the catalog would refuse: org_jpy's charge cannot be priced
        conn.execute(
            sa.text("UPDATE billing.plan_charges SET properties = '{\"unit_amount\": \"x\"}' WHERE model = 'standard'"
                    " AND plan_id = (SELECT plan_id FROM billing.plans WHERE code = 'jpy_plan')")
        )
    drafts.build_drafts(october, OCT, "cli:test")
    with october.begin() as conn:
        conn.execute(sa.text("DELETE FROM billing.invoices WHERE organisation_id = 'org_eur'"))
    # the catalog moves org_kwd to a new version of its plan after the drafts were built
    setup_catalog(october, CATALOG.replace("unit_amount: 0.25", "unit_amount: 0.30"))
    outcomes = sql_checks(october)

    lines = outcomes[checks.LINES_MATCH_PLAN]
    assert lines.organisations == ["org_jpy", "org_kwd"]
    reasons = {f["organisation_id"]: f["reason"] for f in lines.findings}
    assert reasons["org_jpy"] == "plan jpy_plan v1 charges api_calls but the draft has no line for it"
    assert reasons["org_kwd"].startswith("draft priced with plan kwd_plan v1")

    missing = outcomes[checks.ONE_DRAFT_PER_ORG_MONTH]
    assert [(f["organisation_id"], f["reason"]) for f in missing.findings] == [
        ("org_eur", "usage of a charged metric but no draft")
    ]
    priced = outcomes[checks.DRAFTS_PRICED]
    assert priced.organisations == ["org_jpy"] and "not a decimal: 'x'" in priced.findings[0]["reason"]
    assert outcomes[checks.MIGRATION_COMPLETE].passed and outcomes[checks.USAGE_MATCHES_EVENTS].passed


def test_the_rules_suite_names_the_organisation_whose_arithmetic_is_wrong(october):
    drafts.build_drafts(october, OCT, "cli:test")
    with october.begin() as conn:  # drafts are not immutable: a bad writer could do this
        conn.execute(sa.text("UPDATE billing.invoices SET total_minor = total_minor + 1 WHERE organisation_id = 'org_eur'"))
        conn.execute(
            sa.text(
                "UPDATE billing.invoice_lines SET amount_minor = amount_minor + 1 WHERE invoice_id ="
                " (SELECT invoice_id FROM billing.invoices WHERE organisation_id = 'org_kwd') AND metric = 'users'"
            )
        )
    outcome = rules(october)
    assert not outcome.passed and outcome.blocking
    reasons = {(f["organisation_id"], f["reason"]) for f in outcome.findings}
    assert ("org_eur", "drafts: total = subtotal - discount + tax - credits") in reasons
    assert ("org_kwd", "lines: line amount rounded once, half-up, to the currency's minor unit") in reasons
    assert ("org_kwd", "drafts: subtotal = sum of the lines") in reasons
    assert outcome.organisations == ["org_eur", "org_kwd"]


def test_finalization_refuses_unchecked_failed_replaced_or_changed_builds(october):
    drafts.build_drafts(october, OCT, "cli:test")
    with pytest.raises(finalize.FinalizationRefused, match="not run: migration_complete"):
        finalize.finalize_month(october, OCT, "cli:test")

    with october.begin() as conn:
        conn.execute(sa.text("UPDATE usage.usage_period SET units = 0 WHERE organisation_id = 'org_jpy'"))
    sql_checks(october)
    rules(october)
    with pytest.raises(finalize.FinalizationRefused, match="failed: usage_matches_events"):
        finalize.finalize_month(october, OCT, "cli:test")

    fill_usage(october, OCT)
    sql_checks(october)
    rules(october)
    drafts.build_drafts(october, OCT, "cli:test")  # a new build: the verdicts were for the old one
    with pytest.raises(finalize.FinalizationRefused, match="not run"):
        finalize.finalize_month(october, OCT, "cli:test")

    sql_checks(october)
    rules(october)
    # an October event reaches the warehouse after the checks: the drafts do not have it
    ingest(october, [event("straggler", "org_usd", "tokens", 10, utc(2026, 10, 30), utc(2026, 11, 1, 5))])
    with pytest.raises(finalize.FinalizationRefused, match=r"changed since the drafts were built.*org_usd \(1\)"):
        finalize.finalize_month(october, OCT, "cli:test")
    with october.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM billing.invoices WHERE status = 'finalized'")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM billing.invoice_number_counters")).scalar() == 0


def test_a_jump_against_recent_invoices_is_a_warning_that_does_not_block(october):
    
    close_month(october, OCT)
    ingest(october, [event(f"big-{i}", "org_eur", "payments", 10000, utc(2026, 11, 3 + i)) for i in range(3)])
    ingest(october, [event("small", "org_jpy", "api_calls", 1, utc(2026, 11, 3))])
    fill_usage(october, NOV)
    drafts.build_drafts(october, NOV, "cli:test")
    outcomes = sql_checks(october, NOV)
    jump = outcomes[checks.TOTAL_JUMP]
    assert not jump.passed and not jump.blocking
    assert jump.organisations == ["org_eur"]  # 4.55 EUR in October, 300.20 now
    assert jump.findings[0]["organisation_id"] == "org_eur"
    rules(october, NOV)
    assert len(finalize.finalize_month(october, NOV, "cli:test").invoices) == 4


def test_the_jump_check_compares_with_past_invoices_as_credited(october):
    from billing_pipeline.invoicing import credit_notes  # noqa: PLC0415

    close_month(october, OCT)
    fill_usage(october, NOV)
    drafts.build_drafts(october, NOV, "cli:test")
    assert "org_usd" not in sql_checks(october, NOV)[checks.TOTAL_JUMP].organisations
    with october.connect() as conn:
        number, total = conn.execute(sa.text(
            "SELECT number, total_minor FROM billing.invoices WHERE organisation_id = 'org_usd'"
            " AND period_start = :p"), {"p": OCT}).one()
    credit_notes.issue(october, number, reason="October was billed wrongly", actor="t",
                       amount_minor=total - total // 100)  # 44.00 USD -> 0.44 USD
    drafts.build_drafts(october, NOV, "cli:test")
    assert "org_usd" in sql_checks(october, NOV)[checks.TOTAL_JUMP].organisations
