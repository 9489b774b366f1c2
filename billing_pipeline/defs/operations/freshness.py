"""Freshness checks on the assets whose staleness costs revenue: events, usage and payments.

Asset checks rather than Dagster 1.13's FreshnessPolicy: a policy is an attribute of the asset's own
definition (other domains' code), while checks can be declared here, on asset keys, and are evaluated
by their sensor in open-source Dagster. ERROR severity: a stale asset means usage not billed or
payments not applied. Deadlines are those of the schedules (defs/operations/schedules.py) plus margin.
"""

import warnings
from datetime import timedelta

import dagster as dg

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.SupersessionWarning)  # superseded by FreshnessPolicy: see above
    FRESHNESS_CHECKS = [
        # the hour that ended must be moved by minute 30 of the next
        *dg.build_time_partition_freshness_checks(
            assets=["warehouse_events"], deadline_cron="30 * * * *", severity=dg.AssetCheckSeverity.ERROR
        ),
        # yesterday's usage aggregated by 06:00
        *dg.build_time_partition_freshness_checks(
            assets=["usage_daily", "usage_period"],
            deadline_cron="0 6 * * *",
            severity=dg.AssetCheckSeverity.ERROR,
        ),
        # yesterday's provider syncs and payment reconciliation by 08:00
        *dg.build_time_partition_freshness_checks(
            assets=["stripe_sync", "razorpay_sync", "payment_reconciliation"],
            deadline_cron="0 8 * * *",
            severity=dg.AssetCheckSeverity.ERROR,
        ),
        # settlement runs with every webhook inbox run and the daily job: never more than a day and a bit old
        *dg.build_last_update_freshness_checks(
            assets=["invoice_settlement"],
            lower_bound_delta=timedelta(hours=26),
            severity=dg.AssetCheckSeverity.ERROR,
        ),
    ]
    freshness_checks_sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=FRESHNESS_CHECKS,
        minimum_interval_seconds=300,
        name="freshness_checks_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
