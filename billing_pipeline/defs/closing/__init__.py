"""month_close: the monthly close report (billing_pipeline.closing), with a blocking tie-out check."""

import os

import dagster as dg

from billing_pipeline import closing
from billing_pipeline.defs.partitions import monthly
from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.settings import load_settings

TIES_OUT = "ties_out"


@dg.asset(
    group_name="closing",
    partitions_def=monthly,
    deps=[
        dg.AssetKey("finalized_invoices"),
        dg.AssetKey("invoice_settlement"),
        dg.AssetKey("payment_reconciliation"),
        dg.AssetKey("call_reconciliation"),
        dg.AssetKey("usage_reconciliation"),
        dg.AssetKey("event_reconciliation"),
    ],
    kinds={"postgres", "html", "excel"},
    check_specs=[
        dg.AssetCheckSpec(
            TIES_OUT,
            asset="month_close",
            blocking=True,
            description="Per currency: outstanding at end = start + invoiced - credited - collected + refunded,"
            " to the minor unit.",
        )
    ],
)
def month_close(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Per currency: invoiced, credited, collected, refunded, outstanding at the month's start and end,
    wallet movements and open findings; written as BILLING_HOME/reports/YYYY-MM/month_close.html and
    .xlsx (amounts formatted for BILLING_REPORT_LOCALE, default en_US)."""
    month = context.partition_time_window.start.date()
    with warehouse.engine.connect() as conn:
        close = closing.month_close(conn, month)
    locale = os.environ.get("BILLING_REPORT_LOCALE", "en_US")
    html_path, xlsx_path = closing.write_report(close, load_settings().home_dir / "reports", locale)
    figures = close.as_metadata()
    if not close.ties_out:
        context.log.error(f"month close {month:%Y-%m} does not tie out: {figures}")
    yield dg.MaterializeResult(
        metadata={
            "figures": dg.MetadataValue.json(figures),
            "html": dg.MetadataValue.path(str(html_path)),
            "xlsx": dg.MetadataValue.path(str(xlsx_path)),
            "ties_out": close.ties_out,
        }
    )
    yield dg.AssetCheckResult(
        check_name=TIES_OUT,
        passed=close.ties_out,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={c.currency: c.difference for c in close.currencies},
    )


defs = dg.Definitions(assets=[month_close])
