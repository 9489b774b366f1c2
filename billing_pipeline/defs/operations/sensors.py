"""Alerts to the "alerts" resource: every failed run, and reconciliation days over the thresholds."""

import json
from datetime import date

import dagster as dg

from billing_pipeline.accounts.settings import load_accounts_settings
from billing_pipeline.defs.operations.schedules import webhook_inbox_job
from billing_pipeline.defs.resources import AlertResource, WarehouseResource
from billing_pipeline.health import describe_finding, over_thresholds, reconciliation_findings
from billing_pipeline.payments import inbox

# The reconciliation assets; each writes recon.discrepancies rows with source = its name.
RECONCILIATION_ASSETS = (
    "event_reconciliation",
    "usage_reconciliation",
    "payment_reconciliation",
    "call_reconciliation",
)


@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts every failed run of this code location to the alerts resource.",
)
def run_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertResource) -> None:
    run = context.dagster_run
    tags = run.tags
    partition = tags.get("dagster/partition") or (
        f"{tags['dagster/asset_partition_range_start']}..{tags['dagster/asset_partition_range_end']}"
        if "dagster/asset_partition_range_start" in tags
        else "none"
    )
    alerts.send(
        f"Dagster run failed: {run.job_name}",
        {
            "run_id": run.run_id,
            "partition": partition,
            "launched_by": tags.get("dagster/schedule_name") or tags.get("dagster/sensor_name") or "manual",
            "error": (context.failure_event.message or "")[:500],
        },
    )


def _day(partition_key: str | None) -> date | None:
    try:
        return date.fromisoformat(partition_key) if partition_key else None
    except ValueError:
        return None


@dg.sensor(
    name="reconciliation_alerts",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After each materialization of a reconciliation asset, alerts on its days whose findings "
        "exceed BILLING_RECON_ALERT_MAX_FINDINGS or whose amounts differ by more than "
        "BILLING_RECON_ALERT_MAX_AMOUNT_MINOR (per currency)."
    ),
)
def reconciliation_alerts(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, alerts: AlertResource
):
    cursor = json.loads(context.cursor) if context.cursor else {}
    pairs = set()
    for name in RECONCILIATION_ASSETS:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), after_storage_id=cursor.get(name)),
            limit=1000,
            ascending=True,
        ).records
        for record in records:
            day = _day(record.partition_key)
            if day is not None:
                pairs.add((name, day))
            cursor[name] = record.storage_id
    if not pairs:
        return dg.SensorResult(skip_reason="no new reconciliation materialization", cursor=json.dumps(cursor))
    settings = load_accounts_settings()
    with warehouse.engine.connect() as conn:
        flagged = over_thresholds(
            reconciliation_findings(conn, pairs=sorted(pairs)),
            settings.recon_alert_max_findings,
            settings.recon_alert_max_amount_minor,
        )
    for finding in flagged:
        alerts.send(
            f"Reconciliation over threshold: {finding['source']} {finding['recon_date']}",
            {
                "findings": finding["findings"],
                "detail": describe_finding(finding),
                "export": f"billing-pipeline recon export --date {finding['recon_date']}",
            },
        )
    return dg.SensorResult(
        skip_reason=None if flagged else f"{len(pairs)} reconciliation day(s) within thresholds",
        cursor=json.dumps(cursor),
    )


_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
WEBHOOK_PROVIDERS = ("stripe", "razorpay", "vapi")


@dg.sensor(
    job=webhook_inbox_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs webhook_inbox_job when provider webhook events are due, one run at a time.",
)
def webhook_inbox_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    if context.instance.get_runs(dg.RunsFilter(job_name=webhook_inbox_job.name, statuses=_IN_FLIGHT), limit=1):
        return dg.SkipReason("a webhook_inbox_job run is in flight")
    with warehouse.engine.connect() as conn:
        due = inbox.due_events(conn, WEBHOOK_PROVIDERS)
    if not due:
        return dg.SkipReason("no webhook event is due")
    return dg.RunRequest(tags={"billing/due_events": str(due)})
