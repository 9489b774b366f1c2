"""Usage aggregation through the dbt assets (issue 4), against baselines measured in the same run.

On its own embedded PostgreSQL (bench_home: a temporary BILLING_HOME, the product's code path), N
events (default 1,000,000) over one month, six billable metrics (one per aggregation type), 100
organisations with 3 projects each, inserted in occurred_at order. Figures:

  - month_usage_daily_sql_s: usage_daily's SQL for the month backfill (one run, one dbt invocation,
    `BackfillPolicy.single_run`), against ctas_group_by: a hand-written CREATE TABLE AS ... GROUP BY
    organisation, project, metric, day over the same rows (target ratio <= 3). "SQL" is the time of
    the statements dbt sent for the model (from dbt's debug log: the model's query into a temp table,
    the window's delete and insert, dbt's catalog look-ups); *_node_s is dbt's whole node time;
  - month_models_sql_s: every model's SQL in that run (views, usage_daily, usage_period with
    unique_count, latest and weighted_sum over the month's raw events), same baseline;
  - month_tests_sql_s: the dbt data tests of the run (asset checks);
  - month_run_s: the whole Dagster run, same baseline; split into month_dbt_startup_s (the dbt process
    before and after its SQL: Python imports, parsing with the run's vars, artifacts),
    month_dagster_overhead_s (the run around the dbt invocation; the first run of a process also imports
    dbt in-process for dagster-dbt's adapter handle) and the SQL above;
  - day_refresh_*: re-aggregating one day after a late event of a sum metric (target <= 0.25 s of
    SQL): usage_daily's SQL against ctas_group_by_one_day, and day_refresh_models_sql_s, the same
    run's SQL of every model (usage_period keeps its unique_count, latest and weighted_sum rows: their
    events did not change);
  - day_refresh_unique_count_*: the same after a late event of a unique_count metric: usage_period
    makes its pass over the month's raw events;
  - *_late_event_sensor_tick_s: one evaluation of the late-event sensor finding that day;
  - late_event_refresh_* (issue 19, "fixed overhead per run", goal <= 3 s): wall time from the
    late-event sensor's evaluation to usage_period showing the late event, through the product's
    path (the sensor's RunRequest executed in-process as a run of its job, usage_job: dbt models,
    their data tests, usage_reconciliation), and its parts: sensor_tick_s, run_start_overhead_s
    (run start to the dbt invocation), dbt_startup_s (the invocation outside dbt's own elapsed
    time), dbt_non_sql_s (dbt's elapsed time outside its statements: compiling, bookkeeping),
    sql_s (models and tests), after_dbt_s (recording the days, reconciliation, the run's end).
    Medians of --refresh-rounds rounds per mode, alternating, against late_event_refresh_subprocess_*
    (dbt in a subprocess per run, dagster-dbt's default and this project's before issue 19) in the
    same run. The month and day_refresh figures above use the product's default (in-process).

What each change bought (1,000,000 events, 2 shared cores, same run, medians of 3):
  - dbt in-process with dbtRunner on a manifest parsed once per process (vars reach the models at
    compile time, so no parse per run; a subprocess re-parsed fully on every run because the run's
    vars and the profile's environment defeat partial parsing), no manifest.json per run:
    dbt_startup_s 4.077 -> 0.111;
  - no dagster-dbt adapter handle per invocation (an in-process adapter set up by dagster-dbt only
    for column metadata, which this project does not fetch): run_start_overhead_s 0.399 -> 0.071;
  - together: late_event_refresh_wall_s 6.032 -> 1.378 (goal <= 3 s met in-process). SQL (0.46 s)
    and dbt's non-SQL run time (0.57 s) are now most of what is left.
  - the first in-process run of a process also parses (partially, from its environment's folder
    under dbt_project/target): late_event_refresh_first_in_process_wall_s 1.399; a process's very
    first dbt use also imports dbt (~2 s; month_dbt_startup_s includes it and a full parse).
Not measured here: the daemon's part in production (the sensor's 60 s minimum interval, the run
queue, the run worker process and its code location load, a step process per step under the
multiprocess executor), which comes on top of these figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402

MONTH = date(2026, 9, 1)
NEXT_MONTH = date(2026, 10, 1)
ORGS = 100
PROJECTS = 3
METRICS = [
    ("api_calls", "count", None, False),
    ("tokens", "sum", None, False),
    ("seats_peak", "max", None, False),
    ("active_users", "unique_count", "user_id", False),
    ("plan_seats", "latest", None, False),
    ("storage_gb", "weighted_sum", None, True),
]
BENCH = "usage"


def seed(engine: sa.Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO billing.billable_metrics (code, name, aggregation, field_name, allow_negative)"
                " VALUES (:c, :c, :a, :f, :n)"
            ),
            [{"c": c, "a": a, "f": f, "n": neg} for c, a, f, neg in METRICS],
        )
        conn.execute(
            sa.text("SELECT billing.ensure_event_partitions(:a, :b)"),
            {"a": MONTH - timedelta(days=31), "b": MONTH},
        )
        seconds = int(
            (
                datetime.combine(NEXT_MONTH, datetime.min.time())
                - datetime.combine(MONTH, datetime.min.time())
            ).total_seconds()
        )
        # i-th event at a steady pace through the month (arrival order = occurred_at order)
        conn.execute(
            sa.text(
                """
                INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity,
                                            occurred_at, received_at, properties, fingerprint)
                SELECT 'e' || g,
                       'org_' || (g % :orgs),
                       'prj_' || (g % :orgs) || '_' || (g % :projects),
                       (ARRAY['api_calls','tokens','seats_peak','active_users','plan_seats','storage_gb'])[1 + g % 6],
                       CASE WHEN g % 6 = 5 THEN ((g % 7) - 3)::numeric ELSE (1 + g % 13)::numeric / 4 END,
                       ts, ts + interval '2 seconds',
                       CASE WHEN g % 6 = 3 THEN jsonb_build_object('user_id', 'u' || (g % 997)) END,
                       md5(g::text)
                FROM generate_series(0, :n - 1) AS g,
                     LATERAL (SELECT CAST(:month AS timestamptz) + (g::float8 * :seconds / :n) * interval '1 second') AS t(ts)
                """
            ),
            {
                "orgs": ORGS,
                "projects": PROJECTS,
                "n": n,
                "seconds": seconds,
                "month": MONTH.isoformat() + " 00:00+00",
            },
        )
        # the previous month's storage levels, carried into this month by weighted_sum
        conn.execute(
            sa.text(
                "INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity,"
                " occurred_at, received_at, fingerprint)"
                " SELECT 'prev' || o, 'org_' || o, 'prj_' || o || '_0', 'storage_gb', 50, :at, :at, 'p' || o"
                " FROM generate_series(0, :orgs - 1) AS o"
            ),
            {"orgs": ORGS, "at": datetime.combine(MONTH - timedelta(days=10), datetime.min.time(), UTC)},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE billing.events")


def ctas_seconds(engine: sa.Engine, start: date, end: date) -> float:
    """The hand-written baseline: one CREATE TABLE AS ... GROUP BY over the same events."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS public.bench_usage_ctas")
        with Timer() as t:
            conn.execute(
                sa.text(
                    "CREATE TABLE public.bench_usage_ctas AS"
                    " SELECT organisation_id, project_id, metric, (occurred_at AT TIME ZONE 'UTC')::date AS usage_date,"
                    "        count(*) AS event_count, sum(quantity) AS quantity_sum, max(quantity) AS quantity_max"
                    " FROM billing.events"
                    " WHERE occurred_at >= CAST(:s AS timestamptz) AND occurred_at < CAST(:e AS timestamptz)"
                    " GROUP BY 1, 2, 3, 4"
                ),
                {"s": f"{start} 00:00+00", "e": f"{end} 00:00+00"},
            )
        conn.exec_driver_sql("DROP TABLE public.bench_usage_ctas")
    return t.seconds


def run_figures(instance, result, project_dir: Path) -> dict:
    """Times of one usage run: the dbt invocation from the run's logs, SQL from dbt's run_results."""
    started = finished = None
    for event in instance.all_logs(result.run_id):
        message = event.user_message or ""
        if "Running dbt command" in message:
            started = event.timestamp
        elif "Finished dbt command" in message:
            finished = event.timestamp
    [target] = [p for p in (project_dir / "target").glob(f"usage_dbt_models-{result.run_id[:7]}-*")]
    run_results = json.loads((target / "run_results.json").read_text())
    # SQL time per node: dbt's debug log times every statement it sends (SQLQueryStatus), on the
    # connection named after the node (the SQLQuery just before it on the same thread)
    sql: dict[str, float] = {}
    connection_by_thread: dict[str, str] = {}
    for line in (target / "dbt.log").read_text().splitlines():
        event = json.loads(line)
        name, thread = event["info"]["name"], event["info"]["thread"]
        if name == "SQLQuery":
            connection_by_thread[thread] = event["data"]["conn_name"]
        elif name == "SQLQueryStatus" and thread in connection_by_thread:
            node = connection_by_thread[thread]
            sql[node] = sql.get(node, 0.0) + float(event["data"]["elapsed"])
    models = {uid.split(".")[-1]: t for uid, t in sql.items() if uid.startswith("model.")}
    return {
        "invocation_s": finished - started,
        "dbt_elapsed_s": float(run_results["elapsed_time"]),
        "models": models,
        "nodes_s": {
            r["unique_id"].split(".")[-1]: float(r["execution_time"])
            for r in run_results["results"]
            if r["unique_id"].startswith("model.")
        },
        "tests_s": sum(t for uid, t in sql.items() if uid.startswith("test.")),
    }


def report_run(label: str, figures: dict, run_s: float, baseline: str, baseline_s: float) -> None:
    """The figures of one usage run (see run_figures), each named after `label`."""
    models = figures["models"]
    report(BENCH, f"{label}_usage_daily_sql_s", models["usage_daily"], baseline, baseline_s)
    report(BENCH, f"{label}_usage_period_sql_s", models["usage_period"])
    report(BENCH, f"{label}_models_sql_s", sum(models.values()), baseline, baseline_s)
    report(BENCH, f"{label}_tests_sql_s", figures["tests_s"])
    report(BENCH, f"{label}_run_s", run_s, baseline, baseline_s)
    report(BENCH, f"{label}_dbt_startup_s", figures["invocation_s"] - figures["dbt_elapsed_s"])
    report(BENCH, f"{label}_dagster_overhead_s", run_s - figures["invocation_s"])


def period_units(engine: sa.Engine, organisation: str, metric: str) -> float:
    with engine.connect() as conn:
        return float(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(units), 0) FROM usage.usage_period"
                    " WHERE organisation_id = :o AND metric = :m AND period_start = :p"
                ),
                {"o": organisation, "m": metric, "p": MONTH},
            ).scalar_one()
        )


def refresh_once(engine, instance, defs, cursor, day: date, event_id: str) -> tuple[dict, str]:
    """One late event of a sum metric, then the product's path: one evaluation of the late-event
    sensor, its RunRequest executed as a run of the sensor's job (usage_job: the dbt models, their
    data tests, usage_reconciliation), until usage_period shows the event. Wall time and its parts."""
    import time

    import dagster as dg

    from billing_pipeline.defs.resources import WarehouseResource
    from billing_pipeline.defs.usage.project import DBT_PROJECT_DIR

    before = period_units(engine, "org_1", "tokens")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity,"
                " occurred_at, received_at, fingerprint)"
                " VALUES (:id, 'org_1', 'prj_1_1', 'tokens', 1, :at, now(), :id)"
            ),
            {"id": event_id, "at": datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=13)},
        )
    sensor = defs.resolve_sensor_def("usage_late_events_sensor")
    job = defs.resolve_job_def(sensor.job_name)
    start = time.time()
    with Timer() as wall_t:
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"warehouse": WarehouseResource()}
        ) as context:
            tick = sensor(context)
        ticked = time.time()
        [request] = tick.run_requests
        result = job.execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=request.tags
        )
        after = period_units(engine, "org_1", "tokens")
    assert result.success
    assert after == before + 1, (before, after)
    figures = run_figures(instance, result, DBT_PROJECT_DIR)
    dbt_started = next(
        e.timestamp for e in instance.all_logs(result.run_id) if "Running dbt command" in (e.user_message or "")
    )
    sql = sum(figures["models"].values()) + figures["tests_s"]
    parts = {
        "wall_s": wall_t.seconds,
        "sensor_tick_s": ticked - start,
        "run_start_overhead_s": dbt_started - ticked,
        "dbt_startup_s": figures["invocation_s"] - figures["dbt_elapsed_s"],
        "dbt_non_sql_s": figures["dbt_elapsed_s"] - sql,
        "sql_s": sql,
    }
    parts["after_dbt_s"] = parts["wall_s"] - sum(v for k, v in parts.items() if k != "wall_s")
    return parts, tick.cursor


def late_event_refresh(engine, usage_defs, instance, cursor, day: date, rounds: int) -> None:
    """late_event_refresh_*: the same late-event refresh with dbt in a subprocess per run (the
    baseline: dagster-dbt's default, as before issue 19) and in-process (dbtRunner on a manifest
    parsed once per process), alternating, `rounds` times each; medians. The first in-process round
    starts from an empty manifest cache (as a fresh run worker does: a partial parse from disk)."""
    import statistics

    import dagster as dg

    from billing_pipeline.defs.resources import RESOURCES
    from billing_pipeline.defs.usage import dbt_inprocess
    from billing_pipeline.defs.usage.project import usage_dbt_resource

    def defs_for(in_process: bool) -> dg.Definitions:
        return dg.Definitions(
            assets=list(usage_defs.assets),
            asset_checks=list(usage_defs.asset_checks or []),
            jobs=list(usage_defs.jobs),
            sensors=list(usage_defs.sensors),
            resources={**RESOURCES, "dbt": usage_dbt_resource(in_process=in_process)},
        )

    modes = {"subprocess": defs_for(False), "in_process": defs_for(True)}
    figures: dict[str, list[dict]] = {mode: [] for mode in modes}
    dbt_inprocess._MANIFESTS.clear()  # noqa: SLF001 - the first in-process round parses (partially)
    for i in range(rounds):
        for mode, defs in modes.items():
            parts, cursor = refresh_once(engine, instance, defs, cursor, day, f"late-refresh-{mode}-{i}")
            figures[mode].append(parts)
    first = figures["in_process"][0]
    report(BENCH, "late_event_refresh_first_in_process_wall_s", first["wall_s"])
    report(BENCH, "late_event_refresh_first_in_process_dbt_startup_s", first["dbt_startup_s"])
    for name in figures["in_process"][0]:
        base = statistics.median(p[name] for p in figures["subprocess"])
        value = statistics.median(p[name] for p in figures["in_process"])
        report(BENCH, f"late_event_refresh_subprocess_{name}", base)
        report(BENCH, f"late_event_refresh_{name}", value, "subprocess_dbt", base)


def dbt_usage_job():
    """(definitions, job): the dbt usage assets and their data tests as usage_job runs them, without
    the reconciliation and the dbt unit tests, over the daily usage partitions."""
    import dagster as dg

    from billing_pipeline.defs.resources import RESOURCES
    from billing_pipeline.defs.usage import defs as usage_defs
    from billing_pipeline.defs.usage.partitions import usage_daily_partitions

    dbt_keys = [dg.AssetKey(k) for k in ("stg_billable_metrics", "stg_events", "usage_daily", "usage_period")]
    unit_tests = next(c for c in usage_defs.asset_checks if c.node_def.name == "usage_dbt_unit_tests")
    dbt_job = dg.define_asset_job(
        "bench_usage_dbt",
        partitions_def=usage_daily_partitions,
        selection=dg.AssetSelection.assets(*dbt_keys) - dg.AssetSelection.checks(unit_tests),
    )
    defs = dg.Definitions.merge(usage_defs, dg.Definitions(jobs=[dbt_job], resources=RESOURCES))
    return defs, defs.resolve_job_def("bench_usage_dbt")


def day_range_tags(start: date, end: date) -> dict:
    """The tags of one run over the usage days [start, end) (a single-run backfill)."""
    from billing_pipeline.defs.usage.sensors import RANGE_END_TAG, RANGE_START_TAG

    return {RANGE_START_TAG: start.isoformat(), RANGE_END_TAG: (end - timedelta(days=1)).isoformat()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--refresh-rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with bench_home() as settings:
        import dagster as dg

        from billing_pipeline.defs.resources import WarehouseResource
        from billing_pipeline.defs.usage import defs as usage_defs
        from billing_pipeline.defs.usage.project import DBT_PROJECT_DIR
        from billing_pipeline.warehouse import get_engine

        engine = get_engine(settings)
        seed(engine, args.events)
        defs, job = dbt_usage_job()
        instance = dg.DagsterInstance.ephemeral()

        ctas_seconds(engine, MONTH, NEXT_MONTH)  # warm the cache for both sides
        ctas_s = ctas_seconds(engine, MONTH, NEXT_MONTH)

        tags = day_range_tags(MONTH, NEXT_MONTH)
        with Timer() as run_t:
            result = job.execute_in_process(instance=instance, tags=tags)
        assert result.success
        month = run_figures(instance, result, DBT_PROJECT_DIR)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT sum(event_count) FROM usage.usage_daily")).scalar_one()
        assert rows == args.events, (rows, args.events)

        report_run("month", month, run_t.seconds, "ctas_group_by", ctas_s)
        report(BENCH, "month_usage_daily_node_s", month["nodes_s"]["usage_daily"], "ctas_group_by", ctas_s)
        report(BENCH, "month_dbt_invocation_s", month["invocation_s"], "ctas_group_by", ctas_s)

        # Late events for the 15th: the sensor finds the day, one run re-aggregates it. First a
        # late event of a sum metric (usage_period keeps its raw-event rows: no pass over the
        # month), then one of a unique_count metric (usage_period reads the month's raw events).
        day = MONTH + timedelta(days=14)
        ctas_day_s = min(ctas_seconds(engine, day, day + timedelta(days=1)) for _ in range(3))
        sensor = defs.resolve_sensor_def("usage_late_events_sensor")
        cursor = None
        for label, metric, properties in (
            ("day_refresh", "tokens", None),
            ("day_refresh_unique_count", "active_users", '{"user_id": "late-user"}'),
        ):
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity,"
                        " occurred_at, received_at, properties, fingerprint)"
                        " VALUES (:id, 'org_1', 'prj_1_1', :metric, 1, :at, now(), CAST(:props AS jsonb), :id)"
                    ),
                    {
                        "id": f"late-{metric}",
                        "metric": metric,
                        "props": properties,
                        "at": datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12),
                    },
                )
            with (
                Timer() as tick_t,
                dg.build_sensor_context(
                    instance=instance, cursor=cursor, resources={"warehouse": WarehouseResource()}
                ) as context,
            ):
                tick = sensor(context)
            cursor = tick.cursor
            [request] = tick.run_requests
            assert request.partition_key == day.isoformat(), request
            report(BENCH, f"{label}_late_event_sensor_tick_s", tick_t.seconds)
            with Timer() as day_run_t:
                day_result = job.execute_in_process(
                    instance=instance, partition_key=request.partition_key, tags=request.tags
                )
            assert day_result.success
            refresh = run_figures(instance, day_result, DBT_PROJECT_DIR)
            report_run(label, refresh, day_run_t.seconds, "ctas_group_by_one_day", ctas_day_s)

        late_event_refresh(engine, usage_defs, instance, cursor, day, args.refresh_rounds)


if __name__ == "__main__":
    main()
