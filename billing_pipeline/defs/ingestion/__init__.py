"""Ingestion: usage events from the edge store into the warehouse, and the checks that prove it."""

from datetime import timedelta

import dagster as dg

from billing_pipeline.defs.findings import findings_metadata
from billing_pipeline.defs.partitions import daily, hourly
from billing_pipeline.defs.resources import EdgeStoreResource, WarehouseResource
from billing_pipeline.ingestion import edge_checks
from billing_pipeline.ingestion.mover import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, move_window

RETENTION_DAYS = 7


class MoveConfig(dg.Config):
    batch_size: int = DEFAULT_BATCH_SIZE  # edge rows per warehouse transaction
    workers: int = DEFAULT_WORKERS  # warehouse transactions at once


@dg.asset(
    partitions_def=hourly,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ingestion",
    kinds={"sqlite", "postgres"},
)
def warehouse_events(
    context: dg.AssetExecutionContext,
    config: MoveConfig,
    warehouse: WarehouseResource,
    edge: EdgeStoreResource,
) -> dg.MaterializeResult:
    """Usage events moved from the edge store (by received_at hour, UTC) into billing.events.

    Exactly once: each batch commits to the warehouse in one transaction (valid rows to events, bad
    ones to billing.quarantined_events with their reason) before its edge rows are marked processed.
    A backfill over a range is one run; re-running a partition changes nothing.
    """
    start, end = context.partition_time_window

    def progress(batch):
        context.log.info(
            f"batch: {batch.read} edge rows, {batch.inserted} new events, {batch.quarantined} quarantined"
        )

    with edge.connect() as conn:
        result = move_window(
            warehouse.engine, conn, start, end,
            batch_size=config.batch_size, workers=config.workers, on_batch=progress,
        )
    return dg.MaterializeResult(
        metadata={"window_start": start.isoformat(), "window_end": end.isoformat(), **result.as_metadata()}
    )


@dg.asset(
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[warehouse_events],
    group_name="ingestion",
    kinds={"postgres"},
)
def event_reconciliation(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, edge: EdgeStoreResource
) -> dg.MaterializeResult:
    """Edge against warehouse for the events received that day: counts and quantity sums per
    organisation, project, metric and hour; every edge event absent from both billing.events and
    quarantine is a `missing_event` row in recon.discrepancies."""
    findings = []
    with edge.connect() as conn:
        for day in _days(context):
            findings.append(edge_checks.reconcile_day(warehouse.engine, conn, day))
    mismatched = [g for f in findings for g in f.mismatched_groups]
    return dg.MaterializeResult(
        metadata={
            "days": len(findings),
            "edge_rows": sum(f.edge_rows for f in findings),
            "missing_event": sum(f.missing for f in findings),
            "pending_within_window": sum(f.pending for f in findings),
            "mismatched_groups": len(mismatched),
            "worst_groups": dg.MetadataValue.md(edge_checks.groups_markdown(mismatched)),
            **findings_metadata(warehouse.engine, edge_checks.SOURCE, *window_of(context)),
        }
    )


@dg.asset(
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[warehouse_events],
    group_name="ingestion",
    kinds={"sqlite"},
)
def edge_retention(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, edge: EdgeStoreResource
) -> dg.MaterializeResult:
    """Deletes edge rows processed more than 7 days (RETENTION_DAYS) before the end of the
    partition's window, each only after checking it is in the warehouse; reports what it refused."""
    _, end = context.partition_time_window
    with edge.connect() as conn:
        result = edge_checks.purge_processed(warehouse.engine, conn, end - timedelta(days=RETENTION_DAYS))
    if result.refused:
        context.log.warning(f"kept {result.refused} processed edge rows absent from the warehouse")
    return dg.MaterializeResult(
        metadata={
            "cutoff": result.cutoff,
            "candidates": result.candidates,
            "deleted": result.deleted,
            "refused": result.refused,
            "refused_event_ids": ", ".join(result.refused_sample) or "none",
        }
    )


def window_of(context: dg.AssetExecutionContext):
    start, end = context.partition_time_window
    return start.date(), end.date()


def _days(context: dg.AssetExecutionContext):
    start, end = context.partition_time_window
    day = start.date()
    while day < end.date():
        yield day
        day += timedelta(days=1)


defs = dg.Definitions(assets=[warehouse_events, event_reconciliation, edge_retention])
