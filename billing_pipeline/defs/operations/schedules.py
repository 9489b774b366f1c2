"""A job and a schedule for every partitioned asset group of the code location, all in UTC.

Assets are selected by group name or key (this module imports no other domain's code). Each schedule
targets the last complete partition of its job at the tick's scheduled time, as
`dg.build_schedule_from_partitioned_job` does, plus two things it cannot do:

- it waits for its upstream instead of for a fixed delay: usage runs once all 24 movement hours of the
  day are materialized, invoicing once every usage day of the month is, accounts once payments were
  settled after the day ended; until then a tick is skipped with the reason, and the next tick (every
  15 minutes through the schedule's window) looks again;
- once it launched a run for a partition, later ticks skip that partition (Dagster's run keys only
  dedupe within one tick). A failed run is not retried by the next tick: the failure is alerted, and a
  person re-executes it.
A partition that never became ready shows as an overdue schedule in `billing-pipeline health`.

Reconciliation starts at 02:00 because of the providers, not of our assets: late Stripe and Vapi
webhooks of the day have had two hours to arrive, and the syncs read the providers' own lists.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from billing_pipeline.accounts.settings import load_accounts_settings
from billing_pipeline.defs.operations.freshness import FRESHNESS_CHECKS
from billing_pipeline.defs.partitions import daily, hourly, monthly

WAREHOUSE_EVENTS = dg.AssetKey("warehouse_events")
USAGE_DAILY = dg.AssetKey("usage_daily")
USAGE_PERIOD = dg.AssetKey("usage_period")
INVOICE_SETTLEMENT = dg.AssetKey("invoice_settlement")


@dataclass(frozen=True)
class Upstream:
    """An asset a partition waits for: its partitions covering the window (partitions_def given), or,
    unpartitioned, a materialization at or after the window's end."""

    key: dg.AssetKey
    partitions_def: dg.TimeWindowPartitionsDefinition | None = None

    def missing(self, instance: dg.DagsterInstance, window: dg.TimeWindow) -> list[str]:
        if self.partitions_def is None:
            event = instance.get_latest_materialization_event(self.key)
            if event is None or event.timestamp < window.end.timestamp():
                return [
                    f"{self.key.to_user_string()} (not materialized since {window.end:%Y-%m-%d %H:%M} UTC)"
                ]
            return []
        wanted = self.partitions_def.get_partition_keys_in_time_window(window)
        done = instance.get_materialized_partitions(self.key)
        missing = [k for k in wanted if k not in done]
        if not missing:
            return []
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return [f"{self.key.to_user_string()} {shown}"]


def last_complete_partition(partitions_def: dg.TimeWindowPartitionsDefinition, at: datetime) -> str | None:
    """The key of the last partition whose window ended at or before `at` (None before the first)."""
    current = partitions_def.get_partition_key_for_timestamp(at.timestamp())
    start = partitions_def.time_window_for_partition_key(current).start
    key = partitions_def.get_partition_key_for_timestamp((start - timedelta(seconds=1)).timestamp())
    return key if partitions_def.start_time_for_partition_key(key) >= partitions_def.start else None


def partitioned_schedule(
    name: str,
    job,
    partitions_def: dg.TimeWindowPartitionsDefinition,
    cron_schedule: str,
    description: str,
    waits_for: Sequence[Upstream] = (),
) -> dg.ScheduleDefinition:
    # `job` is a job definition, or the name of a job another domain defines (usage_job)
    target = {"job_name": job} if isinstance(job, str) else {"job": job}

    @dg.schedule(
        name=name,
        **target,
        cron_schedule=cron_schedule,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        key = last_complete_partition(partitions_def, context.scheduled_execution_time)
        if key is None:
            return dg.SkipReason("no complete partition yet")
        launched = context.instance.get_runs(
            dg.RunsFilter(tags={"dagster/schedule_name": name, "dagster/partition": key}), limit=1
        )
        if launched:
            return dg.SkipReason(f"partition {key} already launched: run {launched[0].run_id}")
        window = partitions_def.time_window_for_partition_key(key)
        missing = [m for upstream in waits_for for m in upstream.missing(context.instance, window)]
        if missing:
            return dg.SkipReason(f"partition {key} waits for " + "; ".join(missing))
        return dg.RunRequest(partition_key=key)

    return _schedule


def invoicing_cron(grace_hours: int) -> str:
    """Every 15 minutes from `grace_hours` after midnight UTC on the 1st to the end of that day."""
    day, hour = 1 + grace_hours // 24, grace_hours % 24
    return f"*/15 {hour}-23 {day} * *"


def _job(name: str, selection: dg.AssetSelection, description: str):
    # partitions come from the selected assets; the freshness checks are evaluated by their own sensor,
    # not inside these runs
    return dg.define_asset_job(
        name, selection=selection - dg.AssetSelection.checks(*FRESHNESS_CHECKS), description=description
    )


hourly_movement_job = _job(
    "hourly_movement_job",
    dg.AssetSelection.assets(WAREHOUSE_EVENTS),
    "Move the hour's usage events (by received_at) from the edge store into the warehouse.",
)
# The usage domain's own job (its dbt models and usage_reconciliation, without the dbt unit tests,
# which check the SQL rather than a day's data); the late-event sensor runs it too.
USAGE_JOB = "usage_job"
daily_reconciliation_job = _job(
    "daily_reconciliation_job",
    dg.AssetSelection.assets("event_reconciliation", "edge_retention")
    | (
        dg.AssetSelection.groups("payments", "calls")
        - dg.AssetSelection.assets("payments", "calls", "payment_collection")  # monthly: with the invoices
    ),
    "Sync the day from Stripe, Razorpay and Vapi, settle invoices, and reconcile events, payments and calls.",
)
daily_accounts_job = _job(
    "daily_accounts_job",
    dg.AssetSelection.groups("accounts"),
    "Trials, dunning retries, grace periods and notifications, as of the end of the day.",
)
monthly_invoicing_job = _job(
    "monthly_invoicing_job",
    dg.AssetSelection.groups("invoicing") | dg.AssetSelection.assets("payment_collection", "month_close"),
    "Draft the month's invoices, check them, finalize them if every blocking check passed, collect them,"
    " and close the month (the tie-out report).",
)

webhook_inbox_job = _job(
    "webhook_inbox_job",
    dg.AssetSelection.assets("payments", "calls", "invoice_settlement"),
    "Apply the due provider webhook events (Stripe, Razorpay, Vapi), then settle invoices.",
)

JOBS = [
    webhook_inbox_job,
    hourly_movement_job,
    daily_reconciliation_job,
    daily_accounts_job,
    monthly_invoicing_job,
]


def build_schedules(invoicing_grace_hours: int) -> list[dg.ScheduleDefinition]:
    return [
        partitioned_schedule(
            "hourly_movement_schedule",
            hourly_movement_job,
            hourly,
            "5 * * * *",
            "At minute 5 of every hour: the hour that just ended (by received_at, stamped by the edge).",
        ),
        partitioned_schedule(
            "daily_usage_schedule",
            USAGE_JOB,
            daily,
            "*/15 0-5 * * *",
            "Yesterday, once its 24 movement hours are in the warehouse (ticks every 15 min, 00:00-05:45).",
            waits_for=[Upstream(WAREHOUSE_EVENTS, hourly)],
        ),
        partitioned_schedule(
            "daily_reconciliation_schedule",
            daily_reconciliation_job,
            daily,
            "*/15 2-7 * * *",
            "Yesterday, from 02:00 (providers' late webhooks), once its movement hours are in (to 07:45).",
            waits_for=[Upstream(WAREHOUSE_EVENTS, hourly)],
        ),
        partitioned_schedule(
            "daily_accounts_schedule",
            daily_accounts_job,
            daily,
            "*/15 3-8 * * *",
            "Yesterday, from 03:00, once invoices were settled after it ended (ticks to 08:45).",
            waits_for=[Upstream(INVOICE_SETTLEMENT)],
        ),
        partitioned_schedule(
            "monthly_invoicing_schedule",
            monthly_invoicing_job,
            monthly,
            invoicing_cron(invoicing_grace_hours),
            f"Last month, from {invoicing_grace_hours} h after midnight on the 1st (late events; "
            "BILLING_INVOICING_GRACE_HOURS), once every usage day of the month is aggregated.",
            waits_for=[Upstream(USAGE_DAILY, daily), Upstream(USAGE_PERIOD, daily)],
        ),
    ]


_GRACE_HOURS = load_accounts_settings().invoicing_grace_hours
SCHEDULES = build_schedules(_GRACE_HOURS)

# How old a schedule's last successful run may be before `billing-pipeline health` calls it overdue:
# its longest period plus the window its ticks wait for upstream, plus margin.
OVERDUE_AFTER = {
    "hourly_movement_schedule": timedelta(hours=3),
    "daily_usage_schedule": timedelta(hours=32),
    "daily_reconciliation_schedule": timedelta(hours=32),
    "daily_accounts_schedule": timedelta(hours=32),
    "monthly_invoicing_schedule": timedelta(days=32, hours=_GRACE_HOURS),
}
