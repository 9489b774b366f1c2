"""`make demo`: everything from an empty BILLING_HOME to a month of materialized assets.

Steps: embedded PostgreSQL, migrations, the demo catalog, a month of usage into the edge store, then
every asset of the code location for that month, one Dagster run per partitioned range (hourly
movement, daily usage and reconciliation, the monthly invoices, then the unpartitioned assets), in
the Dagster instance of BILLING_HOME/dagster so the runs show in `make ui`. Safe to run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from billing_pipeline import catalog, edge_store, migrations
from billing_pipeline.dagster_home import ensure_dagster_home
from billing_pipeline.demo import generate
from billing_pipeline.settings import Settings
from billing_pipeline.warehouse import describe, get_engine

# The runs' logs go to the Dagster instance (see them in the UI); the terminal shows warnings only.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# Runs in dependency order: each partitions definition's assets run as one range run.
_RUN_ORDER = ("hourly", "daily", "monthly", None)


@dataclass
class RunSummary:
    label: str
    partitions: str
    assets: list[str]
    success: bool


def _partition_kind(partitions_def) -> str | None:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        cron = partitions_def.cron_schedule
        return {"0 * * * *": "hourly", "0 0 * * *": "daily", "0 0 1 * *": "monthly"}.get(cron, cron)
    return type(partitions_def).__name__


def _range_for(kind: str | None, month: date, last_received: datetime) -> tuple[str, str] | None:
    next_month = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    if kind == "hourly":  # through the hour of the last late event received
        return f"{month:%Y-%m-%d}-00:00", f"{last_received:%Y-%m-%d-%H}:00"
    if kind == "daily":
        return f"{month:%Y-%m-%d}", f"{next_month - timedelta(days=1):%Y-%m-%d}"
    if kind == "monthly":
        return f"{month:%Y-%m-%d}", f"{month:%Y-%m-%d}"
    return None


def materialize_month(
    month: date, last_received: datetime, on_step: Callable[[str], None] = print
) -> list[RunSummary]:
    """One run per partitions definition, over the demo month's range, in dependency order."""
    from billing_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    by_kind: dict[str | None, list[dg.AssetKey]] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:
            continue
        by_kind.setdefault(_partition_kind(node.partitions_def), []).append(key)
    unknown = set(by_kind) - set(_RUN_ORDER)
    if unknown:
        raise RuntimeError(f"the demo does not know how to run partitions {sorted(map(str, unknown))}")

    instance = dg.DagsterInstance.get()
    summaries = []
    for kind in _RUN_ORDER:
        keys = sorted(by_kind.get(kind, []), key=lambda k: k.to_user_string())
        if not keys:
            continue
        span = _range_for(kind, month, last_received)
        tags = {"billing/source": "make demo"}
        if span:
            tags |= {ASSET_PARTITION_RANGE_START_TAG: span[0], ASSET_PARTITION_RANGE_END_TAG: span[1]}
        label = kind or "unpartitioned"
        on_step(f"run: {label} assets {', '.join(k.to_user_string() for k in keys)}"
                + (f" for {span[0]} .. {span[1]}" if span else ""))
        job = defs.resolve_implicit_job_def_def_for_assets(keys)
        result = job.execute_in_process(
            run_config=_QUIET, instance=instance, asset_selection=keys, tags=tags, raise_on_error=False
        )
        summaries.append(
            RunSummary(label, f"{span[0]} .. {span[1]}" if span else "-", [k.to_user_string() for k in keys],
                       result.success)
        )
        if not result.success:
            on_step(f"run {label} FAILED (run id {result.run_id}); see `make ui` for its logs")
            break
    return summaries


def table_counts(settings: Settings) -> dict[str, int]:
    engine = get_engine(settings)
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname IN ('billing', 'usage', 'recon') AND c.relkind IN ('r', 'p', 'v')"
                "   AND NOT c.relispartition ORDER BY 1"
            )
        ).scalars().all()
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()  # names from pg_class
            for t in tables
        }


def run_demo(settings: Settings, month: date | None, events: int, on_step: Callable[[str], None]) -> dict:
    logging.getLogger("dagster").setLevel(logging.WARNING)
    ensure_dagster_home(settings)
    month = month or generate.previous_month()
    on_step(f"warehouse: {describe(settings)}")
    engine = get_engine(settings)
    applied = migrations.upgrade(engine)
    on_step(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")

    catalog_path = generate.write_catalog(
        generate.demo_catalog(month), settings.home_dir / "demo-catalog.yaml"
    )
    changes = catalog.apply_catalog(
        engine, catalog.load_catalog(catalog_path), source=str(catalog_path), applied_by="demo"
    )
    on_step(f"catalog: {catalog_path} ({', '.join(f'{k} {v}' for k, v in changes.items())})")

    plan = generate.generate(month, events=events)
    new_rows = generate.write_edge(settings.edge_path, plan)
    on_step(
        f"edge store: {new_rows} new rows in {settings.edge_path} ({len(plan.rows)} submitted, including"
        f" {plan.repeats} repeated submissions, {plan.late} late events and"
        f" {sum(plan.malformed.values())} malformed rows)"
    )
    with edge_store.opened(settings.edge_path) as conn:
        last = conn.execute("SELECT max(received_at) FROM events").fetchone()[0]
    last_received = datetime.fromisoformat(last.replace("Z", "+00:00")).astimezone(timezone.utc)
    runs = materialize_month(month, last_received, on_step)
    return {"month": month, "runs": runs, "counts": table_counts(settings)}
