"""Usage: warehouse_events -> stg_events -> usage_daily -> usage_period (dbt, daily partitions by UTC
day of occurred_at), their dbt tests as asset checks, usage_reconciliation, the usage job (scheduled
daily by operations' daily_usage_schedule), and the sensor that re-aggregates days with late events."""

from __future__ import annotations

import dagster as dg

from billing_pipeline.defs.usage.project import prepare_manifest, usage_dbt_resource
from billing_pipeline.defs.usage.reconciliation import usage_reconciliation
from billing_pipeline.telemetry import disable_telemetry

disable_telemetry()


def build_defs() -> dg.Definitions:
    from billing_pipeline.defs.usage.assets import build_usage_dbt_assets
    from billing_pipeline.defs.usage.checks import build_unit_test_checks
    from billing_pipeline.defs.usage.sensors import (
        build_late_events_sensor,
        build_usage_job,
    )

    resources = {"dbt": usage_dbt_resource()}
    manifest = prepare_manifest()
    if manifest is None:  # logged by prepare_manifest; the rest of the code location still loads
        return dg.Definitions(assets=[usage_reconciliation], resources=resources)
    dbt_models = build_usage_dbt_assets(manifest)
    unit_tests = build_unit_test_checks(manifest)
    job = build_usage_job(dbt_models, usage_reconciliation, unit_tests)
    return dg.Definitions(
        assets=[dbt_models, usage_reconciliation],
        asset_checks=[unit_tests] if unit_tests is not None else [],
        jobs=[job],
        sensors=[build_late_events_sensor(job)],
        resources=resources,
    )


defs = build_defs()
