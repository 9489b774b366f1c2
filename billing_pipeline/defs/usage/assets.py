"""The usage dbt models as Dagster assets: stg_billable_metrics, stg_events (views), usage_daily and
usage_period (incremental), partitioned by UTC day; their dbt data tests are asset checks.

A run covers one partition or a range of them (a backfill is one run, `BackfillPolicy.single_run`):
the window [min_date, max_date) goes to dbt as vars and each incremental model replaces exactly the
days (usage_period: the months) of the window. Every aggregated day is then recorded with its
visibility horizon, which the late-event sensor compares with the events' ingested_at.
"""

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.defs.usage import late_events
from billing_pipeline.defs.usage.partitions import dbt_vars, usage_daily_partitions, window_dates
from billing_pipeline.defs.usage.project import dbt_environment, prune_invocation_artifacts, usage_dbt_project

GROUP = "usage"
USAGE_DAILY = dg.AssetKey("usage_daily")
USAGE_PERIOD = dg.AssetKey("usage_period")

# Run tags the late-event sensor sets; the materializations repeat them as metadata.
TAG_REASON = "usage/refresh_reason"
TAG_DAYS = "usage/refresh_days"
TAG_DETAIL = "usage/refresh_detail"


class UsageTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "model":
            return GROUP
        return super().get_group_name(dbt_resource_props)


usage_translator = UsageTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


class UsageDbtConfig(dg.Config):
    full_refresh: bool = False
    """Rebuild the usage tables from every event (dbt --full-refresh, no window), whatever the partition."""


def _with_metadata(event: Any, extra: Mapping[str, Any]) -> Any:
    if isinstance(event, dg.Output):
        return event.with_metadata({**event.metadata, **extra})
    if isinstance(event, dg.MaterializeResult):
        return event._replace(metadata={**(event.metadata or {}), **extra})  # noqa: SLF001
    return event


def build_usage_dbt_assets(manifest: Path) -> dg.AssetsDefinition:
    @dbt_assets(
        manifest=manifest,
        project=usage_dbt_project,
        dagster_dbt_translator=usage_translator,
        partitions_def=usage_daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        name="usage_dbt_models",
    )
    def usage_dbt_models(
        context: dg.AssetExecutionContext,
        dbt: DbtCliResource,
        warehouse: WarehouseResource,
        config: UsageDbtConfig,
    ) -> Iterator[Any]:
        settings = warehouse.settings()
        # Unit tests check the SQL, not the data: they run as their own asset checks
        # (usage_dbt_unit_tests), not on every partition.
        args = ["build", "--exclude", "test_type:unit"]
        dbt_window: dict[str, str] = {}
        tags = context.run.tags
        if config.full_refresh:
            args.append("--full-refresh")
            start = end = None
            reason = late_events.REASON_FULL_REFRESH
        else:
            start, end = window_dates(*context.partition_time_window)
            dbt_window = dbt_vars(start, end)
            reason = tags.get(TAG_REASON, late_events.REASON_PARTITION)
        metadata: dict[str, Any] = {
            "usage/window": "all days (full refresh)" if start is None else f"[{start}, {end})",
            "usage/refresh_reason": reason,
        }
        if TAG_DAYS in tags:
            metadata["usage/refresh_days"] = tags[TAG_DAYS]
        if TAG_DETAIL in tags:
            metadata["usage/refresh_detail"] = dg.MetadataValue.md(tags[TAG_DETAIL])

        engine = warehouse.engine
        with late_events.usage_dbt_lock(engine):
            with engine.connect() as conn:
                horizon = late_events.visibility_horizon(conn)
            # usage_period records the horizon with the rows it computes (see its model)
            args += ["--vars", json.dumps(dbt_window | {"usage_horizon": horizon.isoformat()})]
            with dbt_environment(settings):
                invocation = dbt.cli(args, context=context)
                try:
                    for event in invocation.stream():
                        yield _with_metadata(event, metadata)
                finally:
                    prune_invocation_artifacts(invocation.target_path)

            # Reached only when dbt succeeded (stream() raises otherwise): the days are aggregated.
            if USAGE_DAILY in context.selected_asset_keys:
                with engine.begin() as conn:
                    if start is None:
                        bounds = conn.execute(
                            sa.text("SELECT min(usage_date), max(usage_date) + 1 FROM usage.usage_daily")
                        ).one()
                        start, end = bounds
                    if start is not None:
                        days = late_events.record_aggregated_days(
                            conn, start, end, horizon=horizon, run_id=context.run_id, reason=reason
                        )
                        context.log.info(
                            f"recorded {days} aggregated day(s) [{start}, {end}), horizon {horizon}"
                        )

    return usage_dbt_models
