"""Invoicing through Dagster: the code location's wiring, and real materializations end to end
(edge -> mover -> dbt usage -> drafts -> blocking checks -> finalization), where a failing blocking
check stops one month's finalization while a clean month finalizes."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pytest
import sqlalchemy as sa
from test_invoicing_support import OCT, event, ingest, invoices, october_events, setup_catalog, utc

from billing_pipeline import edge_store
from billing_pipeline.definitions import defs
from billing_pipeline.invoicing import checks
from billing_pipeline.settings import load_settings

DRAFTS = dg.AssetKey("invoice_drafts")
FINALIZED = dg.AssetKey("finalized_invoices")
DOCUMENTS = dg.AssetKey("invoice_documents")
JOB = defs.resolve_job_def("monthly_invoicing_job")
SEP = date(2026, 9, 1)


def test_the_code_location_wires_invoicing_after_usage_with_blocking_checks():
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("usage_period") in graph.get(DRAFTS).parent_keys
    assert graph.get(FINALIZED).parent_keys == {DRAFTS}
    specs = {key.name: graph.get_check_spec(key) for key in graph.asset_check_keys if key.asset_key == DRAFTS}
    assert {name for name, spec in specs.items() if spec.blocking} == set(checks.BLOCKING_CHECKS)
    assert set(specs) == set(checks.BLOCKING_CHECKS) | {checks.TOTAL_JUMP}
    assert graph.get(DRAFTS).group_name == graph.get(FINALIZED).group_name == "invoicing"
    assert isinstance(graph.get(DRAFTS).partitions_def, dg.MonthlyPartitionsDefinition)
    assert defs.resolve_schedule_def("monthly_invoicing_schedule").job_name == "monthly_invoicing_job"


@pytest.mark.slow
def test_a_failing_blocking_check_stops_finalization_while_a_clean_month_finalizes(engine):
    setup_catalog(engine)
    ingest(engine, october_events() + [event("sep-call", "org_jpy", "api_calls", 1, utc(2026, 9, 4))])
    instance = dg.DagsterInstance.ephemeral()
    usage = defs.resolve_job_def("usage_job").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": "2026-09-01", "dagster/asset_partition_range_end": "2026-10-31"},
    )
    assert usage.success

    october = JOB.execute_in_process(instance=instance, partition_key="2026-10-01")
    assert october.success
    materialized = {m.materialization.asset_key: m.materialization for m in october.get_asset_materialization_events()}
    # the monthly job collects what it finalized, renders each invoice once and closes the month
    assert set(materialized) == {DRAFTS, FINALIZED, dg.AssetKey("payment_collection"), DOCUMENTS, dg.AssetKey("month_close")}
    assert materialized[DOCUMENTS].metadata["rendered_now"].value == 5  # one PDF per finalized invoice
    evaluations = {e.check_name: e for e in october.get_asset_check_evaluations()}
    assert {name for name, e in evaluations.items() if e.passed} == set(checks.BLOCKING_CHECKS) | {checks.TOTAL_JUMP, "ties_out"}
    finalized = invoices(engine, OCT)
    assert {i["status"] for i in finalized.values()} == {"finalized"} and len(finalized) == 5
    assert finalized["org_usd"]["total_minor"] == 4400 and finalized["org_kwd"]["total_minor"] == 1001
    assert finalized["org_usd"]["finalized_by"] == f"run:{october.run_id}"

    # October again: a closed month is left as it is
    again = JOB.execute_in_process(instance=instance, partition_key="2026-10-01")
    assert again.success and invoices(engine, OCT) == finalized
    drafts_metadata = next(
        m.materialization.metadata for m in again.get_asset_materialization_events() if m.materialization.asset_key == DRAFTS
    )
    assert drafts_metadata["month_closed_at"].value is not None and drafts_metadata["drafts"].value == 0

    # September: an event of the month sits in the edge store, not moved to the warehouse yet
    with edge_store.opened(load_settings().edge_path) as edge:
        edge_store.insert_events(edge, [event("stuck", "org_eur", "payments", 70, utc(2026, 9, 20))])
    september = JOB.execute_in_process(instance=instance, partition_key="2026-09-01", raise_on_error=False)
    assert not september.success
    materialized = {m.materialization.asset_key for m in september.get_asset_materialization_events()}
    assert materialized == {DRAFTS}  # finalized_invoices never ran
    failed = {e.check_name: e for e in september.get_asset_check_evaluations() if not e.passed}
    assert set(failed) == {checks.MIGRATION_COMPLETE}
    metadata = failed[checks.MIGRATION_COMPLETE].metadata
    assert metadata["organisations"].value == ["org_eur"]
    assert "not moved to the warehouse yet" in metadata["findings"].value[0]["reason"]
    assert failed[checks.MIGRATION_COMPLETE].severity == dg.AssetCheckSeverity.ERROR
    assert {i["status"] for i in invoices(engine, SEP).values()} == {"draft"}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT period_start FROM billing.invoice_periods")).scalars().all() == [OCT]
