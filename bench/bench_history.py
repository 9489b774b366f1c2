"""One day's work against 1 month and against 12 months of history (issue 19, benchmark 2).

For each history length H (default 1 and 12 months), on its own embedded PostgreSQL (bench_home):
the catalog and organisations of bench_month; then, not timed, the history written set-based:
--events-per-month events per month for the H months before November 2026 and for November's first
14 days (billing.events through generate_series, in bench_month's shapes); usage for those days (the dbt
job over November 1-14, which creates the usage tables; the earlier months' usage.usage_daily,
usage.usage_period and usage.aggregated_days rows by GROUP BY); --charges-per-day Stripe charges and
Razorpay payments per day in billing.payments and billing.provider_records (one per 1,000 missing at
the provider), each day synced, the whole history settled once and reconciled once
(reconcile_payments over the range: recon.discrepancies and the findings' identities). Then the day,
2026-11-15: --day-events edge events (bench_month's generator: ~1% late by up to 47 hours, 0.05%
bad) and --charges-per-day more payments and provider records; and so on for --days days (16th,
17th, ...: the machine is shared, one sample is noisy), each figure the median of the days. Timed,
through the product's code:

  - movement: warehouse_events for the day's 24 hours, one Dagster run in process;
  - usage_refresh: the dbt usage job (models and data tests) for the days the day's events touched
    (the day and the two before it: the late ones reach 47 hours back), one run;
  - reconciliation: payment_reconciliation's SQL for the day (reconcile_payments); and settlement
    (settle_invoices, which the payments job runs before it) as its own figure.

Figures: `<stage>_s_<H>mo` for each H; `range_reconciliation_ms_per_day_<H>mo`, the history's own
reconciliation (one reconcile_payments over all its days, as a backfill runs it) per day; at the longest history with the shortest's as its baseline
(ratio; goal <= 1.2 for every stage).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from bench_ingestion import hourly_backfill  # noqa: E402
from bench_month import QUIET, counts, generate_edge, setup  # noqa: E402
from bench_usage import day_range_tags, dbt_usage_job  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402

BENCH = "history"
DAY = date(2026, 11, 15)
MONTH = DAY.replace(day=1)
STAGES = ("movement", "usage_refresh", "reconciliation", "settlement")


def months_before(month: date, k: int) -> date:
    y, m = divmod(month.year * 12 + month.month - 1 - k, 12)
    return date(y, m + 1, 1)


def ts(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


# bench_month's event shapes, straight into the warehouse; ingested a minute after arrival
HISTORY_EVENTS = """
INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity, occurred_at, received_at,
                            properties, fingerprint, ingested_at)
SELECT :prefix || g,
       format('org_%s', lpad((1 + (g / 6) % :orgs)::text, 5, '0')),
       'prj_' || (g % 3),
       (ARRAY['api_calls', 'tokens', 'seats_peak', 'active_users', 'plan_seats', 'storage_gb'])[1 + g % 6],
       CASE WHEN g % 6 = 5 THEN CASE WHEN (g / (6 * :orgs)) % 4 = 3 THEN -1 ELSE 2 END
            ELSE (1 + g % 13)::numeric / 4 END,
       t, t + interval '2 seconds',
       CASE WHEN g % 6 = 3 THEN jsonb_build_object('user_id', 'u' || (g % 997)) END,
       md5(:prefix || g), t + interval '1 minute'
FROM generate_series(0, :n - 1) AS g,
     LATERAL (SELECT CAST(:start AS timestamptz) + (g * :step) * interval '1 second') AS x(t)
"""

HISTORY_USAGE_DAILY = """
INSERT INTO usage.usage_daily (organisation_id, project_id, metric, usage_date, event_count, quantity_sum,
                               quantity_max, first_occurred_at, last_occurred_at)
SELECT organisation_id, project_id, metric, (occurred_at AT TIME ZONE 'UTC')::date, count(*), sum(quantity),
       max(quantity), min(occurred_at), max(occurred_at)
FROM billing.events WHERE occurred_at >= :s AND occurred_at < :e
GROUP BY 1, 2, 3, 4
"""
# every aggregation type's row, its value a plain aggregate (history that the day does not read);
# weighted_sum's closing level is the month's own sum here, made a carried level by HISTORY_LEVELS.
# Computed a day after the month ended: every event of the month (ingested a minute after it occurred)
# was visible to it.
HISTORY_USAGE_PERIOD = """
INSERT INTO usage.usage_period (organisation_id, metric, aggregation, period_start, period_end, units,
                                event_count, opening_level, closing_level, metric_definition, computed_horizon)
SELECT e.organisation_id, e.metric, m.aggregation, CAST(:s AS date), CAST(:e AS date),
       CASE m.aggregation WHEN 'count' THEN count(*) WHEN 'max' THEN max(e.quantity)
                          WHEN 'unique_count' THEN count(DISTINCT e.properties ->> 'user_id')
                          ELSE sum(e.quantity) END,
       count(*), CASE WHEN m.aggregation = 'weighted_sum' THEN 0 END,
       CASE WHEN m.aggregation = 'weighted_sum' THEN sum(e.quantity) END,
       m.aggregation || coalesce('(' || m.field_name || ')', '')
           || CASE WHEN m.allow_negative THEN ', negative quantities allowed' ELSE '' END,
       CASE WHEN m.aggregation IN ('unique_count', 'latest', 'weighted_sum')
            THEN CAST(:e AS timestamptz) + interval '1 day' END
FROM billing.events e JOIN billing.billable_metrics m ON m.code = e.metric
WHERE e.occurred_at >= :s AND e.occurred_at < :e
GROUP BY e.organisation_id, e.metric, m.aggregation, m.field_name, m.allow_negative
"""
# weighted_sum's levels as the model carries them, in one statement over the history months: the
# opening level is the sum of every earlier month's changes, the closing level that plus the month's.
# (Every organisation has events of every metric in every month in these shapes, so no month lacks a
# row that a level alone would give it; the history starts with the first events: opening 0.)
HISTORY_LEVELS = """
UPDATE usage.usage_period u
SET opening_level = c.level - u.closing_level, closing_level = c.level
FROM (SELECT organisation_id, metric, period_start,
             sum(closing_level) OVER (PARTITION BY organisation_id, metric ORDER BY period_start) AS level
      FROM usage.usage_period
      WHERE aggregation = 'weighted_sum' AND period_start < :month) AS c
WHERE u.organisation_id = c.organisation_id AND u.metric = c.metric AND u.period_start = c.period_start
"""
HISTORY_AGGREGATED_DAYS = """
INSERT INTO usage.aggregated_days (usage_date, horizon, aggregated_at, run_id, reason)
SELECT d::date, d + interval '1 day', d + interval '1 day', 'bench-history', 'partition'
FROM generate_series(CAST(:s AS timestamptz), CAST(:e AS timestamptz) - interval '1 day', interval '1 day') d
"""

# bench_payments' records, n over the days from :start: odd g a Stripe charge, even g a Razorpay payment
PAYMENT_ROWS = """
SELECT g, CASE WHEN g % 2 = 1 THEN 'stripe' ELSE 'razorpay' END AS provider,
       CASE WHEN g % 2 = 1 THEN 'charge' ELSE 'payment' END AS object_type,
       CASE WHEN g % 2 = 1 THEN 'ch_' ELSE 'pay_' END || :prefix || g AS object_id,
       1000 + g % 5000 AS amount_minor, CASE WHEN g % 2 = 1 THEN 'USD' ELSE 'INR' END AS currency,
       CAST(:start AS timestamptz) + (g * :step) * interval '1 second' AS at
FROM generate_series(0, :n - 1) AS g
"""
LEDGER = f"""
INSERT INTO billing.payments (provider, object_type, object_id, amount_minor, amount_refunded_minor, currency,
    status, status_rank, provider_status, provider_created_at, first_seen_via, webhook_seen_at, raw)
SELECT provider, object_type, object_id, amount_minor, 0, currency, 'authorized', 2, 'authorized', at, 'webhook',
       at, '{{}}'
FROM ({PAYMENT_ROWS}) r
"""
# one in 1,000 ledger rows is missing at the provider (a missing_at_provider finding each day)
PROVIDER = f"""
INSERT INTO billing.provider_records (provider, object_type, object_id, amount_minor, amount_refunded_minor,
    currency, status, provider_status, created_at, raw)
SELECT provider, object_type, object_id, amount_minor, 0, currency, 'authorized', 'authorized', at, '{{}}'
FROM ({PAYMENT_ROWS}) r WHERE g % 1000 <> 1
"""
SYNCS = """
INSERT INTO billing.provider_syncs (provider, sync_date, window_start, window_end, counts, synced_by)
SELECT p, d::date, d, d + interval '1 day', '{}', 'bench'
FROM unnest(ARRAY['stripe', 'razorpay']) p,
     generate_series(CAST(:s AS timestamptz), CAST(:e AS timestamptz) - interval '1 day', interval '1 day') d
"""


def payments(engine, start: date, end: date, per_day: int, prefix: str) -> None:
    days = (end - start).days
    params = {"start": ts(start), "n": days * per_day, "step": 86400 / per_day, "prefix": prefix}
    with engine.begin() as conn:
        conn.execute(sa.text(LEDGER), params)
        conn.execute(sa.text(PROVIDER), params)
        conn.execute(sa.text(SYNCS), {"s": ts(start), "e": ts(end)})


def build_history(engine, months: int, per_month: int, per_day: int, orgs: int) -> float:
    """Writes the history; returns the seconds of its one reconciliation over the whole range."""
    import dagster as dg

    from billing_pipeline.payments.reconciliation import reconcile_payments
    from billing_pipeline.payments.settlement import settle_invoices

    first = months_before(MONTH, months)
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT billing.ensure_event_partitions(:a, :b)"), {"a": first, "b": MONTH})
    month = first
    while month <= MONTH:  # the history months, then November's first 14 days
        end = min(months_before(month, -1), DAY)
        n = round(per_month * (end - month).days / 30)
        with engine.begin() as conn:
            conn.execute(
                sa.text(HISTORY_EVENTS),
                {"prefix": f"h{month:%Y%m}_", "orgs": orgs, "n": n, "start": ts(month),
                 "step": (end - month).days * 86400 / n},
            )
        month = months_before(month, -1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE billing.events, billing.event_ids")
    # November 1-14 through the dbt job (it creates the usage tables), the earlier months set-based
    _, job = dbt_usage_job()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), tags=day_range_tags(MONTH, DAY), run_config=QUIET
    )
    assert result.success
    with engine.begin() as conn:
        month = first
        while month < MONTH:
            window = {"s": ts(month), "e": ts(months_before(month, -1))}
            conn.execute(sa.text(HISTORY_USAGE_DAILY), window)
            conn.execute(sa.text(HISTORY_USAGE_PERIOD), window)
            conn.execute(sa.text(HISTORY_AGGREGATED_DAYS), window)
            month = months_before(month, -1)
        conn.execute(sa.text(HISTORY_LEVELS), {"month": MONTH})
    payments(engine, first, DAY, per_day, "h")
    with engine.begin() as conn:  # settled as each day's payments job did (empties billing.settlement_queue)
        settle_invoices(conn, actor="bench-history")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    with Timer() as reconciled, engine.begin() as conn:
        reconcile_payments(conn, first, DAY)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
        conn.exec_driver_sql("CHECKPOINT")
    return reconciled.seconds


def run_day(settings, engine, day: date, day_events: int, per_day: int, orgs: int) -> dict:
    import dagster as dg

    from billing_pipeline.payments.reconciliation import reconcile_payments
    from billing_pipeline.payments.settlement import settle_invoices

    before = counts(engine)
    expected = generate_edge(settings.edge_path, day_events, orgs, day, day + timedelta(days=1),
                             late_floor=day - timedelta(days=2), prefix=f"ev{day:%m%d}_")
    payments(engine, day, day + timedelta(days=1), per_day, f"d{day:%m%d}_")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE billing.payments, billing.provider_records")
        conn.exec_driver_sql("CHECKPOINT")
    seconds = {}
    seconds["movement"] = hourly_backfill(ts(day), ts(day + timedelta(days=1)))
    after = counts(engine)
    if (after[0] - before[0], after[1] - before[1]) != (expected["good"], expected["bad"]):
        raise SystemExit(f"movement: {before} -> {after}, expected {expected}")
    _, job = dbt_usage_job()
    with Timer() as t:
        result = job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            tags=day_range_tags(day - timedelta(days=2), day + timedelta(days=1)),
            run_config=QUIET,
        )
    assert result.success
    seconds["usage_refresh"] = t.seconds
    with Timer() as t, engine.begin() as conn:
        settle_invoices(conn, actor="bench")
    seconds["settlement"] = t.seconds
    with Timer() as t, engine.begin() as conn:
        found = reconcile_payments(conn, day, day + timedelta(days=1)).findings
    seconds["reconciliation"] = t.seconds
    if found != (per_day + 998) // 1000:
        raise SystemExit(f"reconciliation: {found} findings, expected {(per_day + 998) // 1000}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", default="1,12", help="history lengths in months, shortest first")
    parser.add_argument("--events-per-month", type=int, default=1_000_000)
    parser.add_argument("--day-events", type=int, default=300_000)
    parser.add_argument("--charges-per-day", type=int, default=20_000)
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=3, help="days run one after another; the median is reported")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from billing_pipeline.warehouse import get_engine

    lengths = sorted(int(m) for m in args.months.split(","))
    results = {}
    for months in lengths:
        with bench_home() as settings:
            engine = get_engine(settings)
            setup(engine, args.orgs)
            with Timer() as built:
                range_s = build_history(engine, months, args.events_per_month, args.charges_per_day, args.orgs)
            print(f"{months} month(s) of history built in {built.seconds:.1f} s", file=sys.stderr, flush=True)
            days = [
                run_day(settings, engine, DAY + timedelta(days=k), args.day_events, args.charges_per_day, args.orgs)
                for k in range(args.days)
            ]
            print(f"{months} month(s): {days}", file=sys.stderr, flush=True)
            results[months] = {stage: statistics.median(d[stage] for d in days) for stage in STAGES}
        for stage in STAGES:
            report(BENCH, f"{stage}_s_{months}mo", results[months][stage])
        # the history's reconciliation in one run (a backfill over the range), per day of it
        days_of_history = (DAY - months_before(MONTH, months)).days
        report(BENCH, f"range_reconciliation_ms_per_day_{months}mo", range_s * 1000 / days_of_history)
    short, long = lengths[0], lengths[-1]
    if long != short:
        for stage in STAGES:
            report(BENCH, f"{stage}_s_{long}mo", results[long][stage], f"{stage}_s_{short}mo", results[short][stage])


if __name__ == "__main__":
    main()
