"""invoice_drafts and finalized_invoices: thin wiring around billing_pipeline.invoicing."""

import dagster as dg

from billing_pipeline import markdown
from billing_pipeline.audit import run_actor
from billing_pipeline.defs.partitions import monthly
from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.documents import invoices as invoice_pdfs
from billing_pipeline.invoicing import drafts, finalize

# The dbt model usage.usage_period (one row per organisation, metric and month).
USAGE_PERIOD = dg.AssetKey("usage_period")

# No BackfillPolicy.single_run here: a backfill runs one month per run (Dagster's default), because a
# month's drafts read what earlier months' invoices billed (late usage, credits) and each month's
# checks must gate that month's finalization alone.


@dg.asset(
    group_name="invoicing",
    partitions_def=monthly,  # a month is a partition once it has ended
    deps=[USAGE_PERIOD],
    kinds={"postgres"},
    tags={"domain": "invoicing"},
)
def invoice_drafts(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Draft invoices of the month (billing.invoices with status draft, billing.invoice_lines): one per
    organisation and currency, a line per charge, commitment true-up, discounts, tax, credits, and late
    usage of closed months. Re-materializing replaces the month's drafts; a closed month is left as is."""
    period_start = context.partition_time_window.start.date()
    result = drafts.build_drafts(warehouse.engine, period_start, run_actor(context.run_id))
    biggest = sorted(result.drafts, key=lambda d: d.total_minor, reverse=True)[:10]
    table = [(d.organisation_id, d.currency, d.total_minor, len(d.lines), len(d.problems)) for d in biggest]
    return dg.MaterializeResult(
        metadata={
            **result.summary(),
            "dagster/row_count": len(result.drafts),
            "largest_drafts": dg.MetadataValue.md(
                markdown.table(["organisation", "currency", "total_minor", "lines", "problems"], table)
            ),
        }
    )


@dg.asset(
    group_name="invoicing",
    partitions_def=monthly,  # a month is a partition once it has ended
    deps=[invoice_drafts],
    kinds={"postgres"},
    tags={"domain": "invoicing"},
)
def finalized_invoices(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The month's finalized invoices: numbered gap-free per year, immutable (database triggers), the month
    closed. Runs only when every blocking check on invoice_drafts passed (in the run, and as recorded
    against the very draft build being finalized)."""
    period_start = context.partition_time_window.start.date()
    result = finalize.finalize_month(warehouse.engine, period_start, run_actor(context.run_id))
    return dg.MaterializeResult(
        metadata={**result.summary(), "dagster/row_count": len(result.invoices)}
    )


@dg.asset(
    group_name="invoicing",
    partitions_def=monthly,
    deps=[finalized_invoices],
    kinds={"postgres", "pdf"},
    tags={"domain": "invoicing"},
)
def invoice_documents(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Each finalized invoice and credit note of the month rendered once to a PDF (billing.invoice_documents,
    with its sha256); those that already have one are left as they are. Fails, naming the fix, while the
    catalog has no seller. `billing-pipeline invoice pdf NUMBER`."""
    period_start = context.partition_time_window.start.date()
    try:
        rendered = invoice_pdfs.render_documents(
            warehouse.engine, run_actor(context.run_id), period_start=period_start
        )
    except invoice_pdfs.NoSeller as exc:
        raise dg.Failure(str(exc)) from None
    return dg.MaterializeResult(
        metadata={
            "rendered_now": len(rendered),
            "documents": dg.MetadataValue.md(
                markdown.table(["number", "currency", "sha256"],
                               ((r.number, r.currency, r.sha256) for r in rendered), empty="Nothing new.", limit=20)
            ),
        }
    )
