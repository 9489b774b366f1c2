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
from billing_pipeline.utc import next_month

# The runs' logs go to the Dagster instance (see them in the UI); the terminal shows warnings only.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# Runs in dependency order: each partitions definition's assets run as one range run. The
# unpartitioned assets (the webhook inbox applied to payments and calls) run first, so that call
# reconciliation finds only the calls whose webhook never came.
_RUN_ORDER = (None, "hourly", "daily", "monthly")
# Collection runs last: after the month's webhook payments settled and the corrections (demo/collection.py),
# so that it collects what is still due.
COLLECTION = dg.AssetKey("payment_collection")


class Failed(str):
    """A step that failed: the text, marked so that whoever shows the steps can show it as a failure."""


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
    if kind == "hourly":  # through the hour of the last late event received
        return f"{month:%Y-%m-%d}-00:00", f"{last_received:%Y-%m-%d-%H}:00"
    if kind == "daily":
        return f"{month:%Y-%m-%d}", f"{next_month(month) - timedelta(days=1):%Y-%m-%d}"
    if kind == "monthly":
        return f"{month:%Y-%m-%d}", f"{month:%Y-%m-%d}"
    return None


def asset_keys_by_partitioning(groups: set[str] | None = None) -> dict[str | None, list[dg.AssetKey]]:
    """The code location's materializable assets (of `groups`, default all) by kind of partitions."""
    from billing_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    by_kind: dict[str | None, list[dg.AssetKey]] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable and (groups is None or node.group_name in groups):
            by_kind.setdefault(_partition_kind(node.partitions_def), []).append(key)
    unknown = set(by_kind) - set(_RUN_ORDER)
    if unknown:
        raise RuntimeError(f"the demo does not know how to run partitions {sorted(map(str, unknown))}")
    return {kind: sorted(keys, key=lambda k: k.to_user_string()) for kind, keys in by_kind.items()}


def run_assets(
    label: str, keys: list[dg.AssetKey], span: tuple[str, str] | None, on_step: Callable[[str], None]
) -> RunSummary:
    """One Dagster run of `keys` over the partition range `span` (None: unpartitioned)."""
    from billing_pipeline.definitions import defs

    tags = {"billing/source": "make demo"}
    if span:
        tags |= {ASSET_PARTITION_RANGE_START_TAG: span[0], ASSET_PARTITION_RANGE_END_TAG: span[1]}
    names = [k.to_user_string() for k in keys]
    on_step(f"run: {label}: {', '.join(names)}" + (f" for {span[0]} .. {span[1]}" if span else ""))
    result = defs.resolve_implicit_job_def_def_for_assets(keys).execute_in_process(
        run_config=_QUIET, instance=dg.DagsterInstance.get(), asset_selection=keys, tags=tags,
        raise_on_error=False,
    )
    if not result.success:
        on_step(Failed(f"run {label} FAILED (run id {result.run_id}); its logs are in `make ui`"))
    return RunSummary(label, f"{span[0]} .. {span[1]}" if span else "-", names, result.success)


def materialize_month(
    month: date, last_received: datetime, on_step: Callable[[str], None] = print
) -> list[RunSummary]:
    """Every asset for the month: one run per partitions definition, in dependency order."""
    summaries = []
    by_kind = asset_keys_by_partitioning()
    by_kind["monthly"] = [k for k in by_kind.get("monthly", []) if k != COLLECTION]  # after the payments
    for kind in _RUN_ORDER:
        if by_kind.get(kind):
            summaries.append(
                run_assets(kind or "unpartitioned", by_kind[kind], _range_for(kind, month, last_received), on_step)
            )
            if not summaries[-1].success:
                break
    return summaries


def run_job(job_name: str, span: tuple[str, str] | None, on_step: Callable[[str], None]) -> RunSummary:
    """One run of a named job of the code location (the production path), over `span` if given."""
    from billing_pipeline.definitions import defs

    job = defs.resolve_job_def(job_name)
    tags = {"billing/source": "make demo"}
    if span:
        tags |= {ASSET_PARTITION_RANGE_START_TAG: span[0], ASSET_PARTITION_RANGE_END_TAG: span[1]}
    on_step(f"run: {job_name}" + (f" for {span[0]} .. {span[1]}" if span else ""))
    result = job.execute_in_process(run_config=_QUIET, instance=dg.DagsterInstance.get(), tags=tags,
                                    raise_on_error=False)
    if not result.success:
        on_step(Failed(f"run {job_name} FAILED (run id {result.run_id}); its logs are in `make ui`"))
    keys = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
    return RunSummary(job_name, f"{span[0]} .. {span[1]}" if span else "-", keys, result.success)


def settle_payments(days: list[date], on_step: Callable[[str], None]) -> list[RunSummary]:
    """After the providers' payments, what production runs: the webhook inbox, then the daily
    reconciliation (syncs, settlement, payment reconciliation) and accounts jobs over the payment days."""
    span = (f"{days[0]:%Y-%m-%d}", f"{days[-1]:%Y-%m-%d}")
    summaries = []
    for job_name, job_span in (
        ("webhook_inbox_job", None),
        ("daily_reconciliation_job", span),
        ("daily_accounts_job", span),
    ):
        summaries.append(run_job(job_name, job_span, on_step))
        if not summaries[-1].success:
            break
    return summaries


def table_counts(settings: Settings) -> dict[str, int]:
    engine = get_engine(settings)
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname IN ('billing', 'usage', 'recon') AND c.relkind IN ('r', 'p', 'v')"
                "   AND NOT c.relispartition ORDER BY 1"
            )
        ).scalars().all()
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()  # quoted by format('%I')
            for t in tables
        }


def run_demo(settings: Settings, month: date | None, events: int, on_step: Callable[[str], None]) -> dict:
    from billing_pipeline.calls.demo import seed_demo_calls, top_up_demo_wallets
    from billing_pipeline.demo.providers import fake_providers
    from billing_pipeline.payments.demo import seed_demo_payments

    logging.getLogger("dagster").setLevel(logging.WARNING)
    ensure_dagster_home(settings)
    month = month or generate.previous_month()
    on_step(f"warehouse: {describe(settings)}")
    engine = get_engine(settings)
    applied = migrations.upgrade(engine)
    on_step(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")

    demo_catalog = generate.demo_catalog(month)
    catalog_path = generate.write_catalog(demo_catalog, settings.home_dir / "demo-catalog.yaml")
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

    with fake_providers() as providers:
        on_step(f"fake providers: Stripe, Razorpay and Vapi fakes and the webhook API at {providers.api_url}")
        usd_orgs = [o["id"] for o in demo_catalog["organisations"] if o["currency"] == "USD"]
        with engine.begin() as conn:
            top_up_demo_wallets(conn, usd_orgs, 20_000, actor="demo")
        calls = seed_demo_calls(
            providers.vapi, month, usd_orgs, webhook_url=f"{providers.api_url}/webhooks/vapi",
            webhook_secret=providers.vapi_webhook_secret,
        )
        on_step(
            f"vapi: {len(calls.calls)} calls, {len(calls.missing_webhook_ids)} of them without their"
            " end-of-call webhook (call reconciliation recovers them)"
        )
        runs = materialize_month(month, last_received, on_step)
        if all(r.success for r in runs):
            payments = seed_demo_payments(
                engine, providers.stripe, providers.razorpay, month=month,
                webhook_url=providers.api_url,
            )
            on_step(
                f"payments: {payments.webhooks_delivered} signed webhooks for {month:%Y-%m}'s invoices on"
                f" {payments.days[0]} .. {payments.days[-1]}, with {len(payments.expected)} injected discrepancies"
            )
            runs += settle_payments(payments.days, on_step)
        if all(r.success for r in runs):
            from billing_pipeline.demo import collection

            collection.correct(engine, providers.stripe, month, on_step)
            span = _range_for("monthly", month, last_received)
            runs.append(run_assets("payment_collection", [COLLECTION], span, on_step))
            states = collection.collection_states(engine, month)
            on_step("collection: " + ", ".join(f"{n} {state}" for state, n in states.items()))
    return {"month": month, "runs": runs, "counts": table_counts(settings)}
