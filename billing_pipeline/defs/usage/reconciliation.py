"""usage_reconciliation: usage_daily against the raw events, per organisation, metric and UTC day.

Each difference in event count, sum or max of quantity is an `aggregate_mismatch` row in
recon.discrepancies (source `usage_reconciliation`, recon_date = the usage day); a partition run
replaces its own rows for its days, so a clean rerun leaves zero findings.
"""

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import dagster as dg
import sqlalchemy as sa

from billing_pipeline import findings, markdown
from billing_pipeline.defs.findings import findings_metadata
from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.defs.usage.assets import GROUP, USAGE_DAILY
from billing_pipeline.defs.usage.partitions import usage_daily_partitions, window_dates
from billing_pipeline.defs.usage.queries import sql

SOURCE = "usage_reconciliation"
KIND = "aggregate_mismatch"
_WORST_SHOWN = 10


@dataclass(frozen=True)
class AggregateMismatch:
    organisation_id: str
    metric: str
    usage_date: date
    raw_event_count: int | None
    raw_quantity_sum: Decimal | None
    raw_quantity_max: Decimal | None
    agg_event_count: int | None
    agg_quantity_sum: Decimal | None
    agg_quantity_max: Decimal | None

    @property
    def sum_difference(self) -> Decimal:
        return (self.agg_quantity_sum or Decimal(0)) - (self.raw_quantity_sum or Decimal(0))

    @property
    def detail(self) -> str:
        def side(count, total, largest) -> str:
            if count is None:
                return "no row"
            return f"{count} event(s), sum {_plain(total)}, max {_plain(largest)}"

        return (
            f"usage_daily has {side(self.agg_event_count, self.agg_quantity_sum, self.agg_quantity_max)};"
            f" the raw events have {side(self.raw_event_count, self.raw_quantity_sum, self.raw_quantity_max)}"
        )


def _plain(value: Decimal | None) -> str:
    if value is None:
        return "-"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def find_mismatches(conn: sa.Connection, start: date, end: date) -> list[AggregateMismatch]:
    rows = conn.execute(sql("aggregate_mismatches"), {"start_date": start, "end_date": end}).mappings()
    return [AggregateMismatch(**row) for row in rows]


def reconcile(conn: sa.Connection, start: date, end: date) -> tuple[int, list[AggregateMismatch]]:
    """Replace this source's findings for [start, end); returns (aggregate rows checked, mismatches)."""
    if conn.execute(sa.text("SELECT to_regclass('usage.usage_daily') IS NOT NULL")).scalar_one() is not True:
        raise RuntimeError("usage.usage_daily does not exist yet: materialize usage_daily first")
    mismatches = find_mismatches(conn, start, end)
    checked = conn.execute(
        sa.text(
            "SELECT count(*) FROM (SELECT 1 FROM usage.usage_daily WHERE usage_date >= :s AND usage_date < :e"
            " GROUP BY organisation_id, metric, usage_date) AS g"
        ),
        {"s": start, "e": end},
    ).scalar_one()
    conn.execute(
        sa.text(
            "DELETE FROM recon.discrepancies WHERE source = :source"
            " AND recon_date >= :start_date AND recon_date < :end_date"
        ),
        {"source": SOURCE, "start_date": start, "end_date": end},
    )
    if mismatches:
        conn.execute(
            sa.text(
                "INSERT INTO recon.discrepancies"
                " (recon_date, source, kind, organisation_id, reference, detail)"
                " VALUES (:recon_date, :source, :kind, :organisation_id, :reference, :detail)"
            ),
            [
                {
                    "recon_date": m.usage_date,
                    "source": SOURCE,
                    "kind": KIND,
                    "organisation_id": m.organisation_id,
                    "reference": m.metric,
                    "detail": m.detail,
                }
                for m in mismatches
            ],
        )
    findings.observe(conn, SOURCE, start, end)
    return checked, mismatches


def _markdown(mismatches: list[AggregateMismatch]) -> str:
    worst = sorted(mismatches, key=lambda m: abs(m.sum_difference), reverse=True)[:_WORST_SHOWN]
    return markdown.table(
        ["day", "organisation", "metric", "detail"], ((m.usage_date, m.organisation_id, m.metric, m.detail) for m in worst)
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=usage_daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[USAGE_DAILY],
    kinds={"postgres"},
    check_specs=[
        dg.AssetCheckSpec(
            "usage_matches_raw_events",
            asset="usage_reconciliation",
            description="No aggregate_mismatch in the partition's days.",
        )
    ],
)
def usage_reconciliation(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Daily usage aggregates (usage_daily) against the raw warehouse events, per organisation,
    metric and UTC day: every difference in event count, sum or max is an `aggregate_mismatch` row
    in recon.discrepancies (source usage_reconciliation). Zero rows on clean data."""
    start, end = window_dates(*context.partition_time_window)
    with warehouse.engine.begin() as conn:
        checked, mismatches = reconcile(conn, start, end)
    context.log.info(
        f"usage reconciliation [{start}, {end}): {checked} aggregate(s), {len(mismatches)} mismatch(es)"
    )
    metadata = {
        "window": f"[{start}, {end})",
        "aggregates_checked": checked,
        "aggregate_mismatches": len(mismatches),
        "organisations_affected": len({m.organisation_id for m in mismatches}),
    }
    if mismatches:
        metadata["worst_findings"] = dg.MetadataValue.md(_markdown(mismatches))
    metadata.update(findings_metadata(warehouse.engine, SOURCE, start, end))
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(
        check_name="usage_matches_raw_events",
        passed=not mismatches,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"aggregate_mismatches": len(mismatches)},
    )
