"""A whole month end to end (issue 19, benchmark 1), at two sizes (default 1M and 10M events).

For each size, on its own embedded PostgreSQL (bench_home): 10,000 organisations on two plans whose
charges cover every aggregation type of the catalog (count, sum, max, unique_count, latest,
weighted_sum; the metrics of bench_usage); N edge events received at a steady pace through October
2026, about 1% of them late (occurred 1 to 47 hours before the hour they arrive in, within the month)
and 0.05% bad
(a quantity that is not a decimal, an unknown organisation), generated into the edge store with one
set-based SQLite INSERT ... SELECT (not timed). Then, timed, each stage through the product's code:

  - movement: warehouse_events for every hour of the month, one Dagster run in process (the
    single-run backfill of bench_ingestion: one move_window over the month); every edge row ends in
    billing.events or billing.quarantined_events;
  - usage: the dbt usage models and their data tests for every day of the month, one run (bench_usage's
    job);
  - invoicing: monthly_invoicing_job for the month (drafts, blocking checks, finalization; bench_invoicing);
  - payments: one captured Stripe charge per invoice (naming it) plus --charges provider charges
    (bench_payments' rows, 0.4% discrepancies) in the ledger (not timed); then, timed, the provider
    records COPYed in as the syncs land them, settlement (settle_invoices) and payment_reconciliation's
    SQL for the day (reconcile_payments), findings checked against the injected ones.

Figures per stage and size: `<stage>_s` and `<stage>_events_per_s` (the payments stage: records/s of
its provider records, the same number at both sizes), and `<stage>_us_per_event` at the largest size
with the smallest size's as its baseline (ratio = cost per event at 10M / at 1M; goal <= 1.15); then
`total_stages_s` and `total_wall_s` (with generation and set-up) of the largest month (goal <= 600 s).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from bench_ingestion import hourly_backfill  # noqa: E402
from bench_invoicing import insert_organisations  # noqa: E402
from bench_payments import LEDGER_COLUMNS, _copy, generate, load_provider  # noqa: E402
from bench_payments import DAY as PAYMENT_DAY  # noqa: E402
from bench_usage import METRICS, day_range_tags, dbt_usage_job  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402

BENCH = "month"
MONTH = date(2026, 10, 1)
NEXT_MONTH = date(2026, 11, 1)
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
STAGES = ("movement", "usage", "invoicing", "payments")
# every aggregation type (bench_usage.METRICS), priced by a charge of each plan
CATALOG = """
seller: {name: Bench Seller Ltd, address: [1 Bench Road]}
billable_metrics:
%s
plans:
  - code: usage_usd
    name: Usage USD
    currency: USD
    minimum_commitment: 25
    charges:
      - {metric: api_calls, model: package, package_size: 100, amount: 2, free_units: 100}
      - {metric: tokens, model: standard, unit_amount: 0.0015}
      - {metric: seats_peak, model: standard, unit_amount: 3}
      - {metric: active_users, model: standard, unit_amount: 0.5}
      - {metric: plan_seats, model: standard, unit_amount: 4}
      - metric: storage_gb
        model: graduated
        tiers:
          - {from_value: 0, to_value: 100, per_unit_amount: 0.05, flat_amount: 1}
          - {from_value: 101, to_value: null, per_unit_amount: 0.02, flat_amount: 0}
  - code: usage_eur
    name: Usage EUR
    currency: EUR
    charges:
      - metric: api_calls
        model: volume
        tiers:
          - {from_value: 0, to_value: 10, per_unit_amount: 0.5, flat_amount: 2}
          - {from_value: 11, to_value: null, per_unit_amount: 0.25, flat_amount: 0}
      - {metric: tokens, model: standard, unit_amount: 0.002}
      - {metric: seats_peak, model: package, package_size: 2, amount: 1}
      - {metric: active_users, model: standard, unit_amount: 0.4}
      - {metric: plan_seats, model: standard, unit_amount: 3}
      - {metric: storage_gb, model: standard, unit_amount: 0.1}
""" % "\n".join(
    f"  - {{code: {code}, name: {code}, aggregation: {agg}"
    + (f", field: {field}" if field else "")
    + (", allow_negative: true" if negative else "")
    + "}"
    for code, agg, field, negative in METRICS
)
assert [m[0] for m in METRICS] == ["api_calls", "tokens", "seats_peak", "active_users", "plan_seats", "storage_gb"]

# Event g (0-based, received at a steady pace): organisation 1 + (g / 6) % orgs, metric g % 6 (each
# organisation sends every metric), late when g % 100 = 7 (unless that
# would put it before the late floor), bad when g % 2000 is
# 13 (quantity) or 1013 (organisation); storage_gb (weighted_sum) deltas +2, +2, +2, -1, ... per
# organisation, so its level stays positive. Timestamps in the edge's text format (UTC, 'Z').
EDGE_INSERT = """
INSERT INTO events (event_id, organisation_id, project_id, metric, quantity, occurred_at, received_at, properties)
WITH RECURSIVE s(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM s WHERE g + 1 < :n),
t AS (SELECT g, :start + g * :step AS r FROM s)
SELECT :prefix || printf('%010d', g),
       CASE WHEN g % 2000 = 1013 THEN 'org_unknown' ELSE printf('org_%05d', 1 + (g / 6) % :orgs) END,
       'prj_' || (g % 3),
       CASE g % 6 WHEN 0 THEN 'api_calls' WHEN 1 THEN 'tokens' WHEN 2 THEN 'seats_peak'
                  WHEN 3 THEN 'active_users' WHEN 4 THEN 'plan_seats' ELSE 'storage_gb' END,
       CASE WHEN g % 2000 = 13 THEN 'x' || g
            WHEN g % 6 = 5 THEN CASE WHEN (g / (6 * :orgs)) % 4 = 3 THEN '-1' ELSE '2' END
            ELSE printf('%.2f', (1 + g % 13) / 4.0) END,
       strftime('%Y-%m-%dT%H:%M:%fZ',
                CASE WHEN g % 100 = 7 AND r - 3600 * (1 + g % 47) - 2 >= :floor THEN r - 3600 * (1 + g % 47) - 2
                     ELSE max(r - 2, :start) END,
                'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%fZ', r, 'unixepoch'),
       CASE WHEN g % 6 = 3 THEN '{"user_id": "u' || (g % 997) || '"}' END
FROM t
"""


def generate_edge(path: Path, n: int, orgs: int, start: date, end: date, late_floor: date | None = None,
                  prefix: str = "ev") -> dict:
    """N events received in [start, end) into the edge store at `path`, late ones occurring no earlier
    than late_floor (default: start); returns the expected counts."""
    from billing_pipeline import edge_store

    first = datetime.combine(start, datetime.min.time(), UTC).timestamp()
    floor = datetime.combine(late_floor or start, datetime.min.time(), UTC).timestamp()
    span = (end - start).total_seconds()
    with edge_store.opened(path) as edge:
        edge.execute("PRAGMA cache_size = -400000")
        with edge_store.transaction(edge):
            edge.execute(EDGE_INSERT, {"n": n, "start": first, "step": span / n, "orgs": orgs, "floor": floor,
                                       "prefix": prefix})
    bad = sum(1 for g in range(n) if g % 2000 in (13, 1013))
    step = span / n
    late = sum(1 for g in range(7, n, 100) if first + g * step - 3600 * (1 + g % 47) - 2 >= floor)
    return {"bad": bad, "late": late, "good": n - bad}


def setup(engine, orgs: int) -> None:
    from billing_pipeline.catalog import apply_catalog, parse_catalog

    apply_catalog(engine, parse_catalog(CATALOG), source="bench", applied_by="bench")
    with engine.begin() as conn:
        insert_organisations(conn, orgs, ["usage_usd", "usage_eur"])


def counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT count(*) FROM billing.events")).scalar_one(),
            conn.execute(sa.text("SELECT count(*) FROM billing.quarantined_events")).scalar_one(),
        )


def movement(engine, expected: dict) -> float:
    seconds = hourly_backfill(
        datetime.combine(MONTH, datetime.min.time(), UTC), datetime.combine(NEXT_MONTH, datetime.min.time(), UTC)
    )
    moved = counts(engine)
    if moved != (expected["good"], expected["bad"]):
        raise SystemExit(f"movement: (events, quarantined) = {moved}, expected {expected}")
    return seconds


def usage(engine, expected: dict) -> float:
    import dagster as dg

    _, job = dbt_usage_job()
    with Timer() as t:
        result = job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), tags=day_range_tags(MONTH, NEXT_MONTH), run_config=QUIET
        )
    if not result.success:
        raise SystemExit("usage run failed")
    with engine.connect() as conn:
        aggregated = conn.execute(sa.text("SELECT sum(event_count) FROM usage.usage_daily")).scalar_one()
    if aggregated != expected["good"]:
        raise SystemExit(f"usage: {aggregated} events aggregated, expected {expected['good']}")
    return t.seconds


def invoicing(engine, orgs: int) -> float:
    import dagster as dg

    from billing_pipeline.definitions import defs

    job = defs.resolve_job_def("monthly_invoicing_job")
    with Timer() as t:
        run = job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), partition_key=MONTH.isoformat(), raise_on_error=False,
            run_config=QUIET,
        )
    with engine.connect() as conn:
        finalized = conn.execute(
            sa.text("SELECT count(*) FROM billing.invoices WHERE status = 'finalized'")
        ).scalar_one()
    if not run.success or finalized != orgs:
        failed = [e.check_name for e in run.get_asset_check_evaluations() if not e.passed]
        raise SystemExit(f"month-end job failed (checks failed: {failed}); {finalized} finalized")
    return t.seconds


INVOICE_PAYMENTS = """
INSERT INTO billing.{table} ({columns})
SELECT 'stripe', 'charge', 'ch_inv_' || i.number, {extra} i.number, i.total_minor, 0, i.currency, 'captured',
       {rank} 'succeeded', CAST(:at AS timestamptz) + (row_number() OVER (ORDER BY i.number)) * interval '1 second',
       {seen} '{{}}'
FROM billing.invoices i WHERE i.status = 'finalized' AND i.total_minor > 0
"""


def invoice_payments(engine, table: str) -> int:
    """One captured Stripe charge per finalized invoice with something to pay, naming the invoice,
    paid on PAYMENT_DAY: into the ledger (billing.payments, as its webhook recorded it) or the
    provider's records (billing.provider_records, as the sync lands it)."""
    at = datetime.combine(PAYMENT_DAY, datetime.min.time(), UTC) + timedelta(hours=1)
    if table == "payments":
        columns = ("provider, object_type, object_id, organisation_id, invoice_ref, amount_minor,"
                   " amount_refunded_minor, currency, status, status_rank, provider_status,"
                   " provider_created_at, first_seen_via, webhook_seen_at, raw")
        sql = INVOICE_PAYMENTS.format(table=table, columns=columns, extra="i.organisation_id,", rank="4,",
                                      seen="'webhook', CAST(:at AS timestamptz) + interval '1 hour',")
    else:
        columns = ("provider, object_type, object_id, invoice_ref, amount_minor, amount_refunded_minor,"
                   " currency, status, provider_status, created_at, raw")
        sql = INVOICE_PAYMENTS.format(table=table, columns=columns, extra="", rank="", seen="")
    with engine.begin() as conn:
        return conn.execute(sa.text(sql), {"at": at}).rowcount


def payments(engine, charges: int, provider_rows: str, ledger_rows: str, expected_findings: int) -> tuple[float, int]:
    """(seconds, provider records) of the payments stage (see the module's docstring)."""
    from billing_pipeline.payments.reconciliation import reconcile_payments
    from billing_pipeline.payments.settlement import settle_invoices

    _copy(engine, "billing.payments", LEDGER_COLUMNS, ledger_rows)
    paid = invoice_payments(engine, "payments")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) billing.payments")
    with Timer() as t:
        load_provider(engine, provider_rows)
        invoice_payments(engine, "provider_records")
        with engine.begin() as conn:
            settled = settle_invoices(conn, actor="bench")
        with engine.begin() as conn:
            found = reconcile_payments(conn, PAYMENT_DAY, PAYMENT_DAY + timedelta(days=1)).findings
    if settled.allocations != paid or found != expected_findings:
        raise SystemExit(
            f"payments: {settled.allocations} allocations for {paid} invoice payments;"
            f" {found} findings, {expected_findings} injected"
        )
    return t.seconds, charges + paid


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def run_month(n: int, orgs: int, charges: int, payment_rows) -> dict:
    """One month of N events; {stage: (seconds, units)} and the wall time."""
    from billing_pipeline.warehouse import get_engine

    started = time.perf_counter()
    with bench_home() as settings:
        engine = get_engine(settings)
        setup(engine, orgs)
        with Timer() as gen:
            expected = generate_edge(settings.edge_path, n, orgs, MONTH, NEXT_MONTH)
        print(f"{label(n)}: edge generated in {gen.seconds:.1f} s ({expected})", file=sys.stderr, flush=True)
        stages = {}
        stages["movement"] = (movement(engine, expected), n)
        print(f"{label(n)}: movement {stages['movement'][0]:.1f} s", file=sys.stderr, flush=True)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE billing.events")  # as autovacuum would, between the runs
        stages["usage"] = (usage(engine, expected), n)
        print(f"{label(n)}: usage {stages['usage'][0]:.1f} s", file=sys.stderr, flush=True)
        stages["invoicing"] = (invoicing(engine, orgs), n)
        print(f"{label(n)}: invoicing {stages['invoicing'][0]:.1f} s", file=sys.stderr, flush=True)
        stages["payments"] = payments(engine, charges, *payment_rows)
        print(f"{label(n)}: payments {stages['payments'][0]:.1f} s", file=sys.stderr, flush=True)
    return {"stages": stages, "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1000000,10000000", help="month sizes, smallest first")
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--charges", type=int, default=1_000_000, help="provider charges besides the invoices'")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sizes = sorted(int(s) for s in args.events.split(","))
    provider_rows, ledger_rows, expected_findings = generate(args.charges)
    months = {}
    for n in sizes:
        months[n] = run_month(n, args.orgs, args.charges, (provider_rows, ledger_rows, expected_findings))
        for stage in STAGES:
            seconds, units = months[n]["stages"][stage]
            report(BENCH, f"{stage}_s_{label(n)}", seconds)
            report(BENCH, f"{stage}_{'records' if stage == 'payments' else 'events'}_per_s_{label(n)}", units / seconds)
    small, big = sizes[0], sizes[-1]
    if big != small:
        for stage in STAGES:
            (s_small, u_small), (s_big, u_big) = months[small]["stages"][stage], months[big]["stages"][stage]
            unit = "record" if stage == "payments" else "event"
            report(BENCH, f"{stage}_us_per_{unit}_{label(big)}", s_big / u_big * 1e6,
                   f"{stage}_us_per_{unit}_{label(small)}", s_small / u_small * 1e6)
    report(BENCH, f"total_stages_s_{label(big)}", sum(s for s, _ in months[big]["stages"].values()))
    report(BENCH, f"total_wall_s_{label(big)}", months[big]["wall_s"])


if __name__ == "__main__":
    main()
