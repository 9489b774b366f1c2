"""Moving edge events into the warehouse (issue 3), against baselines measured in the same run.

Figures: the mover's events/s for N edge rows (default 1,000,000) and its ratio to
  - raw_copy: a plain SQLite read plus a direct psycopg COPY of the same rows into an empty table
    with a primary key (target ratio >= 0.5); each baseline is the median of three runs,
  - staging_on_conflict: COPY to a staging table plus one INSERT ... ON CONFLICT DO NOTHING
    (stretch target >= 0.9),
  - per_row_insert: one INSERT ... ON CONFLICT per row, the seed's approach (on a sample);
and the wall time of a 30-day hourly backfill of ~200,000 events through Dagster in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402

from billing_pipeline import edge_store  # noqa: E402
from billing_pipeline.catalog import apply_catalog, parse_catalog  # noqa: E402
from billing_pipeline.ingestion.mover import move_window  # noqa: E402
from billing_pipeline.warehouse import get_engine  # noqa: E402

START = datetime(2026, 9, 1, tzinfo=timezone.utc)
CATALOG = """
billable_metrics: [{code: api_calls, name: API calls, aggregation: count}]
plans: [{code: p, name: P, currency: USD, charges: [{metric: api_calls, model: standard, unit_amount: 0.001}]}]
organisations: [%s]
""" % ", ".join(f"{{id: org_{i}, name: O{i}, plan: p, currency: USD}}" for i in range(50))


def edge_rows(n: int, span: timedelta):
    step = span / n
    for i in range(n):
        received = START + step * i
        yield (
            str(uuid.UUID(int=i)), f"org_{i % 50}", f"prj_{i % 50}_{i % 3}", "api_calls", str(1 + i % 5),
            (received - timedelta(seconds=2)).isoformat(), edge_store.utc_text(received),
            '{"endpoint": "/v1/chat"}' if i % 2 else None,
        )


def fresh_edge(settings, name: str, n: int, span: timedelta):
    path = settings.home_dir / f"{name}.sqlite3"
    conn = edge_store.connect(path)
    edge_store.insert_events(conn, edge_rows(n, span))
    return conn


def read_all(edge):
    cur = edge.cursor()
    cur.row_factory = None
    return cur.execute("SELECT " + ", ".join(edge_store.STAGED_COLUMNS[1:]) + " FROM events").fetchall()


def raw_copy(engine, edge) -> float:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_raw")
        conn.exec_driver_sql(
            "CREATE TABLE bench_raw (event_id text PRIMARY KEY, organisation_id text, project_id text, metric text,"
            " quantity numeric(38,12), occurred_at timestamptz, received_at timestamptz, properties jsonb)"
        )
    with Timer() as t, engine.begin() as conn:
        rows = read_all(edge)
        with conn.connection.cursor().copy("COPY bench_raw FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return t.seconds


def staging_on_conflict(engine, edge) -> float:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_target")
        conn.exec_driver_sql("CREATE TABLE bench_target (LIKE bench_raw INCLUDING ALL)")
    with Timer() as t, engine.begin() as conn:
        rows = read_all(edge)
        cursor = conn.connection.cursor()
        cursor.execute("CREATE TEMP TABLE bench_stage (LIKE bench_raw) ON COMMIT DROP")
        with cursor.copy("COPY bench_stage FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute("INSERT INTO bench_target SELECT * FROM bench_stage ON CONFLICT (event_id) DO NOTHING")
    return t.seconds


def per_row(engine, edge, sample: int) -> float:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE bench_rows (LIKE bench_raw INCLUDING ALL)")
    rows = read_all(edge)[:sample]
    with Timer() as t:
        for row in rows:  # the seed's approach: a round trip and a commit per event
            with engine.begin() as conn:
                conn.execute(
                    sa.text("INSERT INTO bench_rows VALUES (:a, :b, :c, :d, CAST(:e AS numeric), CAST(:f AS timestamptz),"
                            " CAST(:g AS timestamptz), CAST(:h AS jsonb)) ON CONFLICT (event_id) DO NOTHING"),
                    dict(zip("abcdefgh", row)),
                )
    return t.seconds


def dagster_backfill(settings, n: int) -> float:
    edge = fresh_edge(settings, "edge", n, timedelta(days=30))
    edge.close()
    return hourly_backfill(START, START + timedelta(days=30))


def hourly_backfill(start: datetime, end: datetime) -> float:
    """One Dagster run (in process, single-run backfill) of warehouse_events for the hours [start, end)
    of the default edge store; returns its seconds."""
    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from billing_pipeline.definitions import defs

    job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey("warehouse_events")])
    last = end - timedelta(hours=1)
    tags = {ASSET_PARTITION_RANGE_START_TAG: f"{start:%Y-%m-%d-%H}:00", ASSET_PARTITION_RANGE_END_TAG: f"{last:%Y-%m-%d-%H}:00"}
    with Timer() as t:
        result = job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), asset_selection=[dg.AssetKey("warehouse_events")], tags=tags,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
    assert result.success
    return t.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--backfill-events", type=int, default=200_000)
    parser.add_argument("--per-row-sample", type=int, default=5_000)
    args = parser.parse_args()
    n = args.events
    with bench_home() as settings:
        engine = get_engine(settings)
        apply_catalog(engine, parse_catalog(CATALOG), source="bench", applied_by="bench")
        edge = fresh_edge(settings, "bench_edge", n, timedelta(days=3))
        # each baseline three times, its median kept: on a shared machine one COPY varies by 2x
        raw_s = statistics.median(raw_copy(engine, edge) for _ in range(3))
        staging_s = statistics.median(staging_on_conflict(engine, edge) for _ in range(3))
        per_row_s = per_row(engine, edge, args.per_row_sample)
        # The baselines' tables go before the mover is timed, and their pages reach disk: otherwise
        # their autovacuum and their writes run on the same two cores during it.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("DROP TABLE bench_raw, bench_target, bench_rows")
            conn.exec_driver_sql("CHECKPOINT")
        with Timer() as t:
            result = move_window(engine, edge, START, START + timedelta(days=4))
        assert result.inserted == n, result
        mover = n / t.seconds
        report("migration", "events_per_s", mover, "raw_copy", n / raw_s)
        report("migration", "events_per_s", mover, "staging_on_conflict", n / staging_s)
        report("migration", "events_per_s", mover, "per_row_insert", args.per_row_sample / per_row_s)
        with engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE billing.events, billing.quarantined_events")
        report("migration", "dagster_30_day_hourly_backfill_s", dagster_backfill(settings, args.backfill_events))


if __name__ == "__main__":
    main()
