"""Usage aggregation end to end: real dbt (dbt-postgres) on the test's own embedded PostgreSQL.

dbt starts in seconds per invocation, so each test batches its assertions around few runs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext

import dagster as dg
import pytest
import sqlalchemy as sa

from billing_pipeline.defs.resources import RESOURCES, WarehouseResource
from billing_pipeline.defs.usage import defs as usage_defs
from billing_pipeline.defs.usage.partitions import dbt_vars
from billing_pipeline.defs.usage.project import DBT_PROJECT_DIR, dbt_env

pytestmark = pytest.mark.slow

DEFS = dg.Definitions.merge(usage_defs, dg.Definitions(resources=RESOURCES))
USAGE_JOB = DEFS.resolve_job_def("usage_job")
SENSOR = DEFS.resolve_sensor_def("usage_late_events_sensor")
DBT_MODELS = next(
    a for a in DEFS.assets if isinstance(a, dg.AssetsDefinition) and a.node_def.name == "usage_dbt_models"
)
UNIT_TESTS = next(c for c in DEFS.asset_checks if c.node_def.name == "usage_dbt_unit_tests")

METRICS = [
    # code, aggregation, field_name, allow_negative
    ("api_calls", "count", None, False),
    ("tokens", "sum", None, False),
    ("seats_peak", "max", None, False),
    ("active_users", "unique_count", "user_id", False),
    ("plan_seats", "latest", None, False),
    ("storage_gb", "weighted_sum", None, True),
]
AGGREGATION = {code: agg for code, agg, _, _ in METRICS}
FIELD = {code: field for code, _, field, _ in METRICS}


@dataclass(frozen=True)
class Event:
    event_id: str
    organisation_id: str
    project_id: str
    metric: str
    quantity: Decimal
    occurred_at: datetime
    properties: dict | None = None


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_events(seed: int, start: datetime, end: datetime, n: int, prefix: str) -> list[Event]:
    rng = random.Random(seed)
    span = int((end - start).total_seconds())
    events = []
    for i in range(n):
        metric = METRICS[i % len(METRICS)][0]
        if metric == "storage_gb":
            quantity = Decimal(rng.randint(-20, 40)) / 4
        else:
            quantity = Decimal(rng.randint(1, 4000)) / 1000
        properties = {"user_id": f"u{rng.randint(1, 9)}"} if metric == "active_users" else {"region": "eu"}
        if rng.random() < 0.1:
            properties = None
        events.append(
            Event(
                f"{prefix}{i}",
                rng.choice(["org_a", "org_b", "org_c"]),
                rng.choice(["p1", "p2"]),
                metric,
                quantity,
                start + timedelta(seconds=rng.randrange(span)),
                properties,
            )
        )
    return events


# Events on the exact edges of days and months, and two rows usage must ignore.
EDGE_EVENTS = [
    Event("edge1", "org_a", "p1", "api_calls", Decimal(1), utc(2025, 1, 1)),
    Event("edge2", "org_a", "p1", "api_calls", Decimal(1), utc(2024, 12, 31, 23, 59, 59, 999999)),
    Event("edge3", "org_a", "p1", "tokens", Decimal("2.5"), utc(2025, 1, 31, 23, 59, 59, 999999)),
    Event("edge4", "org_a", "p1", "tokens", Decimal("7"), utc(2025, 2, 1)),
    Event("edge5", "org_a", "p1", "storage_gb", Decimal(10), utc(2025, 1, 1)),
    Event("unknown_metric", "org_a", "p1", "mystery", Decimal(5), utc(2025, 1, 5)),
    Event("negative_forbidden", "org_b", "p1", "tokens", Decimal(-5), utc(2025, 1, 6)),
]


def insert_metrics(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO billing.billable_metrics (code, name, aggregation, field_name, allow_negative)"
                " VALUES (:code, :code, :agg, :field, :neg)"
            ),
            [{"code": c, "agg": a, "field": f, "neg": n} for c, a, f, n in METRICS],
        )


def insert_events(engine: sa.Engine, events: list[Event]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity,"
                " occurred_at, received_at, properties, fingerprint)"
                " VALUES (:event_id, :org, :project, :metric, :quantity, :occurred_at, :occurred_at,"
                " CAST(:properties AS jsonb), :event_id)"
            ),
            [
                {
                    "event_id": e.event_id,
                    "org": e.organisation_id,
                    "project": e.project_id,
                    "metric": e.metric,
                    "quantity": e.quantity,
                    "occurred_at": e.occurred_at,
                    "properties": None if e.properties is None else json.dumps(e.properties),
                }
                for e in events
            ],
        )


def valid(e: Event) -> bool:
    return e.metric in AGGREGATION and (e.quantity >= 0 or e.metric == "storage_gb")


def month_bounds(day: date) -> tuple[datetime, datetime]:
    start = utc(day.year, day.month, 1)
    end = utc(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return start, end


def expected_period(events: list[Event], month: date) -> dict[tuple[str, str], Decimal]:
    """usage_period's units for one month, computed here from the events (Lago's semantics)."""
    start, end = month_bounds(month)
    by_key: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for e in events:
        if valid(e) and e.occurred_at < end:
            by_key[(e.organisation_id, e.metric)].append(e)
    out = {}
    with localcontext() as ctx:
        ctx.prec = 60
        for key, evs in by_key.items():
            inside = sorted(
                (e for e in evs if e.occurred_at >= start), key=lambda e: (e.occurred_at, e.event_id)
            )
            agg = AGGREGATION[key[1]]
            if agg == "weighted_sum":
                level = sum((e.quantity for e in evs if e.occurred_at < start), Decimal(0))
                if not inside and level == 0:
                    continue
                total, at = Decimal(0), start
                for e in inside:
                    total += level * Decimal(str((e.occurred_at - at).total_seconds()))
                    level += e.quantity
                    at = e.occurred_at
                total += level * Decimal(str((end - at).total_seconds()))
                units = total / Decimal(str((end - start).total_seconds()))
            elif not inside:
                continue
            elif agg == "count":
                units = Decimal(len(inside))
            elif agg == "sum":
                units = sum((e.quantity for e in inside), Decimal(0))
            elif agg == "max":
                units = max(e.quantity for e in inside)
            elif agg == "unique_count":
                units = Decimal(len({(e.properties or {}).get(FIELD[key[1]]) for e in inside} - {None}))
            else:  # latest
                units = inside[-1].quantity
            out[key] = units.quantize(Decimal("1e-12"), rounding=ROUND_HALF_UP)
    return out


def snapshot(engine: sa.Engine, *, bookkeeping: bool = True) -> dict[str, list[tuple]]:
    """Both tables; without usage_period's computed_horizon when bookkeeping is False (dbt run
    outside Dagster records none)."""
    period = "*" if bookkeeping else (
        "organisation_id, metric, aggregation, period_start, period_end, units, event_count,"
        " opening_level, closing_level, metric_definition"
    )
    with engine.connect() as conn:
        return {
            "daily": conn.execute(sa.text("SELECT * FROM usage.usage_daily ORDER BY 1, 2, 3, 4")).all(),
            "period": conn.execute(sa.text(f"SELECT {period} FROM usage.usage_period ORDER BY 1, 2, 4")).all(),
        }


def period_units(engine: sa.Engine, month: str) -> dict[tuple[str, str], Decimal]:
    """usage_period's units of one month, by organisation and metric."""
    query = sa.text("SELECT organisation_id, metric, units FROM usage.usage_period WHERE period_start = :m")
    with engine.connect() as conn:
        return {(r.organisation_id, r.metric): r.units for r in conn.execute(query, {"m": month})}


def run_range(instance, first: str, last: str, **kwargs) -> dg.ExecuteInProcessResult:
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    return USAGE_JOB.execute_in_process(instance=instance, tags=tags | kwargs.pop("tags", {}), **kwargs)


def execute_request(instance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Run what a sensor requested, as the daemon would (partition key or partition range tags)."""
    return USAGE_JOB.execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags
    )


def build_day_by_day(settings, days: list[date], target) -> None:
    """Build day by day: one dbt invocation per day with the vars the asset passes for that day's
    partition, in one process (dbt's programmatic runner, the manifest parsed once): ~0.3 s a day
    instead of the ~4 s of a fresh dbt process. `run`, not the asset's `build`: the data tests
    write nothing, and the asset runs them on the month build this is compared with."""
    script = """
import json, sys
from dbt.cli.main import dbtRunner
project, target, windows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
common = ["--project-dir", project, "--profiles-dir", project, "--target-path", target, "--log-path", target]
parsed = dbtRunner().invoke(["parse", "--quiet", *common])
assert parsed.success, parsed.exception
runner = dbtRunner(manifest=parsed.result)
for window in windows:
    result = runner.invoke(["run", "--quiet", "--no-write-json", "--vars", json.dumps(window), *common])
    assert result.success, (window, result.exception)
"""
    windows = [dbt_vars(d, d + timedelta(days=1)) for d in days]
    env = {**os.environ, **dbt_env(settings)}
    completed = subprocess.run(
        [sys.executable, "-c", script, str(DBT_PROJECT_DIR), str(target), json.dumps(windows)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def test_month_backfill_in_one_run_equals_day_by_day_reruns_change_nothing_and_recon_finds_a_tamper(
    engine, settings, tmp_path
):
    insert_metrics(engine)
    events = make_events(4, utc(2024, 12, 20), utc(2025, 2, 1), 1500, "e") + EDGE_EVENTS
    insert_events(engine, events)
    instance = dg.DagsterInstance.ephemeral()

    # A month backfill is one run, one dbt invocation for all 31 partitions.
    result = run_range(instance, "2025-01-01", "2025-01-31")
    assert result.success
    assert len(instance.get_run_records()) == 1
    materialized = {
        (m.materialization.asset_key.to_user_string(), m.materialization.partition)
        for m in result.get_asset_materialization_events()
    }
    assert {
        ("usage_daily", "2025-01-01"),
        ("usage_daily", "2025-01-31"),
        ("usage_period", "2025-01-15"),
        ("usage_reconciliation", "2025-01-31"),
    } <= materialized
    daily_metadata = next(
        m.materialization.metadata
        for m in result.get_asset_materialization_events()
        if m.materialization.asset_key == dg.AssetKey("usage_daily")
    )
    assert daily_metadata["usage/window"].value == "[2025-01-01, 2025-02-01)"
    assert daily_metadata["usage/refresh_reason"].value == "partition"
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    assert {c.check_name for c in checks} >= {
        "usage_daily_key_is_unique",
        "usage_period_key_is_unique",
        "usage_period_aggregation_is_known",
        "usage_matches_raw_events",
    }

    month = snapshot(engine)
    month_values = snapshot(engine, bookkeeping=False)
    with engine.connect() as conn:
        # usage_daily equals the valid raw events, day by day
        raw = conn.execute(
            sa.text(
                "SELECT count(*), sum(quantity) FROM billing.events e WHERE occurred_at >= '2025-01-01 00:00+00'"
                " AND occurred_at < '2025-02-01 00:00+00' AND metric <> 'mystery' AND NOT (metric = 'tokens' AND quantity < 0)"
            )
        ).one()
        agg = conn.execute(sa.text("SELECT sum(event_count), sum(quantity_sum) FROM usage.usage_daily")).one()
        assert tuple(agg) == tuple(raw)
        assert conn.execute(
            sa.text("SELECT min(usage_date), max(usage_date) FROM usage.usage_daily")
        ).one() == (date(2025, 1, 1), date(2025, 1, 31))
        # every aggregation type, Lago's semantics, against an independent computation
        period = {
            (r.organisation_id, r.metric): r.units
            for r in conn.execute(
                sa.text("SELECT * FROM usage.usage_period WHERE period_start = '2025-01-01'")
            )
        }
        assert {
            r.aggregation
            for r in conn.execute(sa.text("SELECT DISTINCT aggregation FROM usage.usage_period"))
        } == set(AGGREGATION.values())
        # the weighted_sum level carried in from December is in January's opening level
        opening = conn.execute(
            sa.text(
                "SELECT opening_level FROM usage.usage_period WHERE organisation_id = 'org_a'"
                " AND metric = 'storage_gb' AND period_start = '2025-01-01'"
            )
        ).scalar_one()
        assert opening == sum(
            e.quantity
            for e in events
            if e.metric == "storage_gb" and e.organisation_id == "org_a" and e.occurred_at < utc(2025, 1, 1)
        )
        assert opening != 0
        recon_rows = conn.execute(sa.text("SELECT count(*) FROM recon.discrepancies")).scalar_one()
        recorded = conn.execute(
            sa.text(
                "SELECT count(*), min(usage_date), max(usage_date), min(reason) FROM usage.aggregated_days"
            )
        ).one()
    assert period == expected_period(events, date(2025, 1, 1))
    assert recon_rows == 0
    assert tuple(recorded) == (31, date(2025, 1, 1), date(2025, 1, 31), "partition")

    # Materializing a day a second time (the backfill was its first) changes nothing.
    rerun = USAGE_JOB.execute_in_process(instance=instance, partition_key="2025-01-15")
    assert rerun.success
    assert snapshot(engine) == month
    assert {
        (m.materialization.asset_key.to_user_string(), m.materialization.partition)
        for m in rerun.get_asset_materialization_events()
    } >= {("usage_daily", "2025-01-15")}

    # dbt unit tests (given/expect rows, every aggregation type) run as asset checks.
    checks_job = dg.Definitions(
        assets=[DBT_MODELS],
        asset_checks=[UNIT_TESTS],
        resources=DEFS.resources,
        jobs=[dg.define_asset_job("usage_unit_tests", selection=dg.AssetSelection.checks(UNIT_TESTS))],
    ).resolve_job_def("usage_unit_tests")
    unit = checks_job.execute_in_process(instance=instance).get_asset_check_evaluations()
    assert {(c.asset_key.to_user_string(), c.check_name) for c in unit} >= {
        ("usage_daily", "daily_aggregates_utc_days_of_window"),
        ("usage_period", "weighted_sum_across_month_boundary"),
        ("usage_period", "weighted_sum_lago_documented_example"),
        ("usage_period", "unique_count_of_a_property"),
        ("usage_period", "latest_is_last_event_by_occurred_at"),
        ("usage_period", "count_sum_max_from_daily_rows"),
    }
    assert all(c.passed for c in unit), [(c.check_name, c.metadata) for c in unit if not c.passed]

    # Tampering with one aggregate: the reconciliation finds exactly that one.
    with engine.begin() as conn:
        tampered_org = conn.execute(
            sa.text(
                "UPDATE usage.usage_daily SET quantity_sum = quantity_sum + 1 WHERE (organisation_id, project_id,"
                " metric, usage_date) = (SELECT organisation_id, project_id, metric, usage_date FROM usage.usage_daily"
                " WHERE metric = 'tokens' AND usage_date = '2025-01-10' ORDER BY 1, 2 LIMIT 1)"
                " RETURNING organisation_id"
            )
        ).scalar_one()
    recon = run_range(
        instance, "2025-01-01", "2025-01-31", asset_selection=[dg.AssetKey("usage_reconciliation")]
    )
    assert recon.success
    with engine.connect() as conn:
        findings = conn.execute(
            sa.text(
                "SELECT recon_date, source, kind, organisation_id, reference, detail FROM recon.discrepancies"
            )
        ).all()
    assert [(f.recon_date, f.source, f.kind, f.organisation_id, f.reference) for f in findings] == [
        (date(2025, 1, 10), "usage_reconciliation", "aggregate_mismatch", tampered_org, "tokens")
    ]
    assert "usage_daily has" in findings[0].detail
    [check] = recon.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    # one materialization per day of the range, each with the run's counts
    assert {
        m.materialization.metadata["aggregate_mismatches"].value
        for m in recon.get_asset_materialization_events()
    } == {1}

    # The same month built day by day, from empty tables, equals the month built in one run.
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE usage.usage_daily, usage.usage_period"))
    build_day_by_day(
        settings, [date(2025, 1, 1) + timedelta(days=i) for i in range(31)], tmp_path / "dbt-target"
    )
    assert snapshot(engine, bookkeeping=False) == month_values


def test_late_events_are_aggregated_again_by_the_sensor_without_human_action(engine):
    insert_metrics(engine)
    events = make_events(7, utc(2025, 1, 10), utc(2025, 1, 13), 300, "e")
    events += [
        Event("feb", "org_a", "p1", "tokens", Decimal(1), utc(2025, 2, 3, 12)),
        Event("mar1", "org_c", "p1", "storage_gb", Decimal(5), utc(2025, 3, 5, 12)),
        Event("mar2", "org_a", "p1", "tokens", Decimal(2), utc(2025, 3, 5, 13)),
    ]
    insert_events(engine, events)
    with engine.begin() as conn:
        # February is invoiced: invoicing closed the month (its table, sql/0030_invoices.sql)
        conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_periods (period_start, closed_at, closed_by, invoice_count)"
                " VALUES ('2025-02-01', now(), 'test', 0)"
            )
        )
    instance = dg.DagsterInstance.ephemeral()

    # First build: a full refresh (the Config switch) aggregates every day from the first to the
    # last with events, Jan 10 to Mar 5.
    full = USAGE_JOB.execute_in_process(
        instance=instance,
        partition_key="2025-01-10",
        run_config={"ops": {"usage_dbt_models": {"config": {"full_refresh": True}}}},
    )
    assert full.success
    before = snapshot(engine)
    assert {r.usage_date for r in before["daily"]} == {
        date(2025, 1, 10), date(2025, 1, 11), date(2025, 1, 12), date(2025, 2, 3), date(2025, 3, 5)
    }  # fmt: skip

    def tick(cursor):
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"warehouse": WarehouseResource()}
        ) as context:
            return SENSOR(context)

    quiet = tick(None)
    assert not quiet.run_requests and quiet.skip_reason

    # Late events: two for Jan 11, one for Jan 12 (consecutive: one run; the Jan 12 one changes a
    # weighted_sum level, which carries into every later month), one for the invoiced February, one
    # for a day never aggregated (the daily schedule's business, not a refresh).
    late = [
        Event("late1", "org_a", "p1", "tokens", Decimal("100"), utc(2025, 1, 11, 8)),
        Event("late2", "org_b", "p2", "api_calls", Decimal(1), utc(2025, 1, 11, 23, 59, 59)),
        Event("late3", "org_c", "p1", "storage_gb", Decimal(50), utc(2025, 1, 12, 6)),
        Event("late4", "org_a", "p1", "tokens", Decimal(1), utc(2025, 2, 3, 13)),
        Event("late5", "org_a", "p1", "tokens", Decimal(1), utc(2025, 3, 20)),
    ]
    insert_events(engine, late)
    result = tick(quiet.cursor)
    request, carry = result.run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2025-01-11"
    assert request.tags["dagster/asset_partition_range_end"] == "2025-01-12"
    assert request.tags["usage/refresh_reason"] == "late_events"
    assert request.tags["usage/refresh_days"] == "2025-01-11, 2025-01-12"
    assert request.tags["usage/late_events"] == "3"
    assert "2025-01-11: 2 event(s) ingested" in request.tags["usage/refresh_detail"]
    assert "after the day was aggregated at" in request.tags["usage/refresh_detail"]
    # March (open) is recomputed for the carried storage level; the invoiced February is not
    # reopened (invoicing bills its late usage as a late line)
    assert carry.partition_key == "2025-03-01"
    assert "recomputes 2025-03" in carry.tags["usage/refresh_detail"]
    # Until the refresh has run, the same days come back under the same run key (no duplicate run).
    assert [r.run_key for r in tick(result.cursor).run_requests] == [request.run_key, carry.run_key]

    run = execute_request(instance, request)
    assert run.success
    metadata = next(
        m.materialization.metadata
        for m in run.get_asset_materialization_events()
        if m.materialization.asset_key == dg.AssetKey("usage_daily")
    )
    assert metadata["usage/refresh_reason"].value == "late_events"
    assert metadata["usage/refresh_days"].value == "2025-01-11, 2025-01-12"
    assert all(c.passed for c in run.get_asset_check_evaluations())
    assert execute_request(instance, carry).success

    after = snapshot(engine)
    with engine.connect() as conn:
        day_totals = dict(
            conn.execute(
                sa.text("SELECT usage_date, sum(event_count) FROM usage.usage_daily GROUP BY 1")
            ).all()
        )
        refreshed = dict(conn.execute(sa.text("SELECT usage_date, reason FROM usage.aggregated_days")).all())
    january, february, march = (period_units(engine, m) for m in ("2025-01-01", "2025-02-01", "2025-03-01"))
    before_totals = defaultdict(int)
    for r in before["daily"]:
        before_totals[r.usage_date] += r.event_count
    assert day_totals[date(2025, 1, 11)] == before_totals[date(2025, 1, 11)] + 2
    assert day_totals[date(2025, 1, 12)] == before_totals[date(2025, 1, 12)] + 1
    assert day_totals[date(2025, 1, 10)] == before_totals[date(2025, 1, 10)]
    assert day_totals[date(2025, 2, 3)] == before_totals[date(2025, 2, 3)]
    assert date(2025, 3, 20) not in day_totals
    assert (
        refreshed[date(2025, 1, 11)]
        == refreshed[date(2025, 1, 12)]
        == refreshed[date(2025, 3, 1)]
        == "late_events"
    )
    assert refreshed[date(2025, 1, 10)] == refreshed[date(2025, 2, 3)] == "full_refresh"
    # January's and March's period usage are those of every event, the late ones included;
    # February, invoiced, keeps what was billed
    assert january == expected_period(events + late[:3], date(2025, 1, 1))
    assert march == expected_period(events + late[:3], date(2025, 3, 1))
    assert (
        march[("org_c", "storage_gb")] != expected_period(events, date(2025, 3, 1))[("org_c", "storage_gb")]
    )
    assert february == expected_period(events, date(2025, 2, 1))
    assert [r for r in after["daily"] if r.usage_date == date(2025, 2, 3)] == [
        r for r in before["daily"] if r.usage_date == date(2025, 2, 3)
    ]

    # Refreshed: nothing more to do.
    assert not tick(result.cursor).run_requests

    def january_units() -> dict:
        return period_units(engine, "2025-01-01")

    # A late event of a count metric only: the refresh keeps January's unique_count, latest and
    # weighted_sum rows as they are (no pass over the month's raw events), and January is still
    # exactly every event's usage.
    late6 = Event("late6", "org_b", "p2", "api_calls", Decimal(1), utc(2025, 1, 10, 9))
    insert_events(engine, [late6])
    [request6] = tick(result.cursor).run_requests
    assert request6.partition_key == "2025-01-10"
    assert execute_request(instance, request6).success
    assert january_units() == expected_period(events + late[:3] + [late6], date(2025, 1, 1))

    # A unique_count event for Jan 20, before the sensor's refresh of that day: a run of another
    # January day already counts it, as computing the month from its raw events again would.
    jan20 = Event("jan20", "org_a", "p1", "active_users", Decimal(1), utc(2025, 1, 20, 8), {"user_id": "new"})
    insert_events(engine, [jan20])
    assert USAGE_JOB.execute_in_process(instance=instance, partition_key="2025-01-11").success
    everything = events + late[:3] + [late6, jan20]
    key = ("org_a", "active_users")
    assert january_units()[key] == expected_period(everything, date(2025, 1, 1))[key]

    # An operator replaced an event (deleted one, inserted another: the same count): the refresh
    # computes the row again, since an event of it came after the row was computed.
    replaced = next(e for e in events if e.metric == "active_users" and e.occurred_at.date() == date(2025, 1, 11))
    replacement = Event("replacement", replaced.organisation_id, "p1", "active_users", Decimal(1),
                        replaced.occurred_at, {"user_id": "someone-else"})
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM billing.events WHERE event_id = :e"), {"e": replaced.event_id})
    insert_events(engine, [replacement])
    requests = tick(result.cursor).run_requests  # Jan 11, and Jan 20 not refreshed yet
    assert [r.partition_key for r in requests] == ["2025-01-11", "2025-01-20"]
    assert all(execute_request(instance, r).success for r in requests)
    everything = [e for e in everything if e is not replaced] + [replacement]
    key = (replaced.organisation_id, "active_users")
    assert january_units()[key] == expected_period(everything, date(2025, 1, 1))[key]

    # A metric definition changed in the catalog: the month's next run computes its rows again,
    # though none of its events changed (no event has the new field: no unique value).
    assert any(units for (_, metric), units in january_units().items() if metric == "active_users")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE billing.billable_metrics SET field_name = 'region' WHERE code = 'active_users'")
        )
    assert USAGE_JOB.execute_in_process(instance=instance, partition_key="2025-01-10").success
    assert {units for (_, metric), units in january_units().items() if metric == "active_users"} == {0}


def _daily_days(engine: sa.Engine) -> set[date]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT DISTINCT usage_date FROM usage.usage_daily")).scalars())


def test_in_process_dbt_two_runs_at_once_in_one_process_and_a_run_in_a_fresh_process(engine, db_url):
    """dbt runs in-process (dbtRunner, one parsed manifest per process): two runs started at once
    from two threads of one process both succeed (dbt's global state is taken one invocation at a
    time), each with its own window; and a run in a fresh Python process (as a run worker launched
    by the daemon) parses and runs on its own."""
    import threading

    from billing_pipeline.defs.usage import dbt_inprocess

    insert_metrics(engine)
    insert_events(engine, make_events(7, utc(2025, 3, 1), utc(2025, 3, 4), 60, "c"))
    results: dict[str, bool] = {}

    def run(day: str) -> None:
        # an instance per thread: the ephemeral instance's in-memory SQLite storage is not for two
        # threads at once ("database table is locked"); dbt's state is what the two runs share
        instance = dg.DagsterInstance.ephemeral()
        results[day] = USAGE_JOB.execute_in_process(instance=instance, partition_key=day).success

    threads = [threading.Thread(target=run, args=(day,)) for day in ("2025-03-01", "2025-03-02")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == {"2025-03-01": True, "2025-03-02": True}
    assert _daily_days(engine) == {date(2025, 3, 1), date(2025, 3, 2)}
    assert dbt_inprocess._MANIFESTS  # noqa: SLF001 - parsed once in this process

    code = (
        "import dagster as dg\n"
        "from billing_pipeline.defs.resources import RESOURCES\n"
        "from billing_pipeline.defs.usage import defs\n"
        "job = dg.Definitions.merge(defs, dg.Definitions(resources=RESOURCES)).resolve_job_def('usage_job')\n"
        "assert job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), partition_key='2025-03-03').success\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "dbt (in-process) build" in done.stdout + done.stderr
    assert _daily_days(engine) == {date(2025, 3, 1), date(2025, 3, 2), date(2025, 3, 3)}
