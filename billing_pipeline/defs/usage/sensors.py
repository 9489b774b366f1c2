"""The usage job (scheduled daily by operations) and the late-event sensor that re-aggregates stale days."""

import dagster as dg

from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.defs.usage import late_events
from billing_pipeline.defs.usage.assets import TAG_DAYS, TAG_DETAIL, TAG_REASON
from billing_pipeline.defs.usage.partitions import usage_daily_partitions

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
_DETAIL_LINES = 31


def build_usage_job(
    dbt_models: dg.AssetsDefinition,
    reconciliation: dg.AssetsDefinition,
    unit_tests: dg.AssetChecksDefinition | None,
):
    selection = dg.AssetSelection.assets(dbt_models, reconciliation)
    if unit_tests is not None:
        # the dbt unit tests check the SQL, not a day's data: not on every partition run
        selection = selection - dg.AssetSelection.checks(unit_tests)
    return dg.define_asset_job(
        "usage_job",
        selection=selection,
        partitions_def=usage_daily_partitions,
        description=(
            "Aggregate usage for UTC days (usage_daily, usage_period) and reconcile them with the raw events."
        ),
        # its two steps run one after the other: in the run's own process, with dbt's parsed manifest
        # kept there, not one fresh process per step importing dbt and parsing again (issue 19)
        executor_def=dg.in_process_executor,
    )


def _days_label(days: list) -> str:
    if len(days) <= 7:
        return ", ".join(day.isoformat() for day in days)
    return f"{days[0]}..{days[-1]} ({len(days)} days)"


def run_requests_for(plan: late_events.RefreshPlan) -> list[dg.RunRequest]:
    """One run per run of consecutive days to refresh (a run's partition window is contiguous)."""
    requests = []
    late_by_date = {d.usage_date: d for d in plan.refresh}
    for first, last in plan.ranges:
        days = [day for day in plan.days if first <= day <= last]
        late = [late_by_date[day] for day in days if day in late_by_date]
        carried = [day for day in days if day in plan.carry and day not in late_by_date]
        lines = [f"- {d.describe()}" for d in late] + [
            f"- {day}: recomputes {day:%Y-%m}, whose weighted_sum levels carry the late events of"
            f" {plan.carry[day]:%Y-%m}"
            for day in carried
        ]
        detail = "\n".join(lines[:_DETAIL_LINES])
        if len(lines) > _DETAIL_LINES:
            detail += f"\n- ... and {len(lines) - _DETAIL_LINES} more day(s)"
        tags = {
            TAG_REASON: late_events.REASON_LATE_EVENTS,
            TAG_DAYS: _days_label(days),
            TAG_DETAIL: "Aggregated again:\n" + detail,
            "usage/late_events": str(sum(d.late_events for d in late)),
        }
        key = late_events.run_key(late, carried, plan.carry_token if carried else "")
        if first == last:
            requests.append(dg.RunRequest(run_key=key, partition_key=first.isoformat(), tags=tags))
        else:
            tags |= {RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()}
            requests.append(dg.RunRequest(run_key=key, tags=tags))
    return requests


def build_late_events_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="usage_late_events_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Finds usage days that received events after they were aggregated (billing.events.ingested_at"
            " against usage.aggregated_days) and requests a run for exactly those day partitions, one run"
            " per run of consecutive days, tagged with the days and the reason. Days in a month that"
            " already has a finalized invoice are left alone: invoicing bills them as late usage."
        ),
    )
    def usage_late_events_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
        with warehouse.engine.connect() as conn:
            plan = late_events.plan_refresh(conn, late_events.cursor_load(context.cursor))
        for day in plan.skipped_closed:
            context.log.info(f"not reopening {day.usage_date} (its month is invoiced): {day.describe()}")
        requests = run_requests_for(plan)
        for request in requests:
            context.log.info(f"refreshing {request.tags[TAG_DAYS]}: late events")
        cursor = late_events.cursor_dump(plan.next_scan_from)
        if not requests:
            return dg.SensorResult(skip_reason="no aggregated usage day has late events", cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return usage_late_events_sensor
