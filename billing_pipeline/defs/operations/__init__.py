"""Operations: a job and a UTC schedule for every partitioned asset group, alerts (failed runs,
reconciliation thresholds) and freshness checks on events, usage and payments. Assets are selected by
group name or key: nothing here imports another domain's code."""

import dagster as dg

from billing_pipeline.defs.operations.freshness import FRESHNESS_CHECKS, freshness_checks_sensor
from billing_pipeline.defs.operations.schedules import JOBS, SCHEDULES
from billing_pipeline.defs.operations.sensors import (
    reconciliation_alerts,
    run_failure_alerts,
    webhook_inbox_sensor,
)

defs = dg.Definitions(
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=[webhook_inbox_sensor, run_failure_alerts, reconciliation_alerts, freshness_checks_sensor],
    asset_checks=FRESHNESS_CHECKS,
)
