"""Month-end invoicing (issue 5): 10,000 organisations x 5 metrics, against a per-organisation loop.

Figures (all measured in this run, on the same rows):
  - pricing_and_write_s: drafts.build_drafts for the month (load with a few set-based queries,
    price in memory, COPY out), against per_organisation_loop_s: the same pricing functions with a
    round trip per organisation for its plan, per charge for its usage and transactions, and one
    INSERT per invoice and per line (how a naive month-end script does it), timed on a sample of
    organisations (--loop-sample, 1,000) and scaled to all of them;
  - drafts_per_s: the same two runs as drafts per second (ratio = speed-up, target >= 5);
  - month_end_job_s: the whole monthly_invoicing_job Dagster job in process (drafts again, the SQL
    checks and the Great Expectations suite, finalization), target <= 30 s.

Set-up (not timed): a private embedded PostgreSQL; the catalog (5 metrics, 3 plans); organisations
and N events per organisation and metric COPYed into billing.events; usage.usage_period built from
them with one GROUP BY in the dbt model's columns; the same events in the edge store, processed
(migration_complete compares every one of them).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402

BENCH = "invoicing"
MONTH = date(2026, 10, 1)
CATALOG = """
seller: {name: Bench Seller Ltd, address: [1 Bench Road]}
billable_metrics:
  - {code: api_calls, name: API calls, aggregation: count}
  - {code: tokens, name: Tokens, aggregation: sum}
  - {code: peak, name: Peak sessions, aggregation: max}
  - {code: storage, name: Storage, aggregation: sum}
  - {code: payments, name: Payments, aggregation: sum}
plans:
  - code: standard_usd
    name: Standard
    currency: USD
    minimum_commitment: 25
    charges:
      - {metric: api_calls, model: package, package_size: 100, amount: 2, free_units: 100}
      - {metric: tokens, model: standard, unit_amount: 0.0015}
      - {metric: peak, model: standard, unit_amount: 3}
      - metric: storage
        model: graduated
        tiers:
          - {from_value: 0, to_value: 100, per_unit_amount: 0.05, flat_amount: 1}
          - {from_value: 101, to_value: null, per_unit_amount: 0.02, flat_amount: 0}
      - {metric: payments, model: percentage, rate: 1.4, fixed_amount: 0.25, free_units_per_events: 1}
  - code: volume_eur
    name: Volume
    currency: EUR
    charges:
      - metric: api_calls
        model: volume
        tiers:
          - {from_value: 0, to_value: 10, per_unit_amount: 0.5, flat_amount: 2}
          - {from_value: 11, to_value: null, per_unit_amount: 0.25, flat_amount: 0}
      - {metric: tokens, model: standard, unit_amount: 0.002}
      - {metric: peak, model: package, package_size: 2, amount: 1}
      - {metric: storage, model: standard, unit_amount: 0.1}
      - metric: payments
        model: graduated_percentage
        tiers:
          - {from_value: 0, to_value: 1000, rate: 2, flat_amount: 0}
          - {from_value: 1001, to_value: null, rate: 1, flat_amount: 0.5}
  - code: yen
    name: Yen
    currency: JPY
    charges:
      - {metric: api_calls, model: standard, unit_amount: 0.5}
      - {metric: tokens, model: standard, unit_amount: 0.03}
      - {metric: peak, model: standard, unit_amount: 100}
      - {metric: storage, model: standard, unit_amount: 7}
      - {metric: payments, model: percentage, rate: 3}
"""
METRICS = ("api_calls", "tokens", "peak", "storage", "payments")


def insert_organisations(conn, orgs: int, plans: list[str]) -> None:
    """Organisations org_00001 .. (n-th on the plan plans[n % len(plans)]), a third of them taxed, a
    tenth with a percentage discount, a seventh with prepaid credits; provider none."""
    conn.execute(
        sa.text(
            """
            INSERT INTO billing.organisations (organisation_id, name, plan_code, plan_id, currency, provider,
                tax_rate, discounts, prepaid_credits_minor, catalog_hash, created_at)
            SELECT format('org_%s', lpad(n::text, 5, '0')), format('Org %s', n), p.code, p.plan_id, p.currency,
                   'none', CASE WHEN n % 3 = 0 THEN 0.2 ELSE 0 END,
                   CASE WHEN n % 10 = 0 THEN '[{"code": "d10", "kind": "percentage", "value": "10",
                                                "valid_from": "2026-01-01"}]'::jsonb ELSE '[]' END,
                   CASE WHEN n % 7 = 0 THEN 500 ELSE 0 END, 'bench', '2026-01-01'
            FROM generate_series(1, :orgs) n
            JOIN billing.plans p ON p.code = (CAST(:plans AS text[]))[1 + n % cardinality(CAST(:plans AS text[]))]
            """
        ),
        {"orgs": orgs, "plans": plans},
    )


def setup(engine, edge_path: Path, orgs: int, per_metric: int) -> int:
    """Catalog, organisations, events (warehouse and edge), usage; returns the number of events."""
    from billing_pipeline import edge_store
    from billing_pipeline.catalog import apply_catalog, parse_catalog

    apply_catalog(engine, parse_catalog(CATALOG), source="bench", applied_by="bench")
    start = datetime.combine(MONTH, datetime.min.time(), UTC)
    with engine.begin() as conn:
        insert_organisations(conn, orgs, ["standard_usd", "volume_eur", "yen"])
        conn.execute(sa.text("SELECT billing.ensure_event_partitions(:m, :m)"), {"m": MONTH})
        rows = []
        for n in range(1, orgs + 1):
            org = f"org_{n:05d}"
            for m, metric in enumerate(METRICS):
                for k in range(per_metric):
                    at = start + timedelta(minutes=(n * 37 + m * 11 + k * 1439) % (30 * 24 * 60))
                    quantity = (n + k * 7 + m) % 50 + 1 if metric != "payments" else (n * (k + 1)) % 900 + 10
                    rows.append((f"e{n}-{m}-{k}", org, "p", metric, quantity, at))
        with conn.connection.cursor().copy(
            "COPY billing.events (event_id, organisation_id, project_id, metric, quantity, occurred_at,"
            " received_at, fingerprint) FROM STDIN"
        ) as copy:
            for event_id, org, project, metric, quantity, at in rows:
                copy.write_row((event_id, org, project, metric, quantity, at, at, event_id))
        conn.exec_driver_sql(
            """
            CREATE TABLE usage.usage_period AS
            SELECT e.organisation_id, e.metric, m.aggregation, DATE '2026-10-01' AS period_start,
                   DATE '2026-11-01' AS period_end,
                   (CASE m.aggregation WHEN 'count' THEN count(*) WHEN 'max' THEN max(e.quantity)
                         ELSE sum(e.quantity) END)::numeric(38, 12) AS units,
                   count(*) AS event_count, NULL::numeric(38, 12) AS opening_level,
                   NULL::numeric(38, 12) AS closing_level
            FROM billing.events e JOIN billing.billable_metrics m ON m.code = e.metric
            GROUP BY 1, 2, 3
            """
        )
        conn.exec_driver_sql("ANALYZE")
    with edge_store.opened(edge_path) as edge, edge_store.transaction(edge):
        text = edge_store.utc_text
        edge.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            ((e, o, p, m, str(q), text(at), text(at), text(at)) for e, o, p, m, q, at in rows),
        )
    return len(rows)


def per_organisation_loop(engine, period_start: date, sample: int) -> int:
    """The baseline: the same pricing, one organisation at a time, a round trip per query and row,
    for the first `sample` organisations (it costs minutes for all 10,000 on this shared machine)."""
    from billing_pipeline.invoicing import periods
    from billing_pipeline.invoicing.drafts import Charge, OrganisationInput, Usage, dump_json, price_organisation

    bounds = periods.bounds(period_start)
    with engine.begin() as conn:
        org_ids = conn.execute(
            sa.text("SELECT organisation_id FROM billing.organisations ORDER BY 1 LIMIT :n"), {"n": sample}
        ).scalars().all()
        build = conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_draft_builds (build_id, period_start, built_by, draft_count)"
                " VALUES (gen_random_uuid(), :p, 'bench:loop', 0) RETURNING build_id"
            ),
            {"p": period_start},
        ).scalar_one()
        for org_id in org_ids:
            o = conn.execute(
                sa.text(
                    "SELECT o.*, p.code AS plan_code, p.version AS plan_version, p.minimum_commitment,"
                    " p.definition::text AS plan_definition FROM billing.organisations o"
                    " JOIN billing.plans p ON p.plan_id = o.plan_id WHERE o.organisation_id = :o"
                ),
                {"o": org_id},
            ).one()
            charges = conn.execute(
                sa.text(
                    "SELECT c.metric_code, c.model, c.properties::text AS properties, m.aggregation"
                    " FROM billing.plan_charges c JOIN billing.billable_metrics m ON m.code = c.metric_code"
                    " WHERE c.plan_id = :p ORDER BY 1"
                ),
                {"p": o.plan_id},
            ).all()
            usage = {}
            for c in charges:
                units = conn.execute(
                    sa.text(
                        "SELECT units FROM usage.usage_period WHERE organisation_id = :o AND metric = :m"
                        " AND period_start = :period_start"
                    ),
                    {"o": org_id, "m": c.metric_code, **bounds},
                ).scalar_one_or_none()
                amounts = ()
                if c.model == "percentage":
                    amounts = tuple(
                        conn.execute(
                            sa.text(
                                "SELECT quantity FROM billing.events WHERE organisation_id = :o AND metric = :m"
                                " AND occurred_at >= :period_start_ts AND occurred_at < :period_end_ts"
                                " ORDER BY occurred_at, event_id"
                            ),
                            {"o": org_id, "m": c.metric_code, **bounds},
                        ).scalars()
                    )
                if units is not None:
                    usage[c.metric_code] = Usage(units, amounts)
            org = OrganisationInput(
                organisation_id=org_id, currency=o.currency, tax_rate=o.tax_rate, discounts=o.discounts,
                existed_in_period=True, credits_available_minor=o.prepaid_credits_minor, plan_id=o.plan_id,
                plan_code=o.plan_code, plan_version=o.plan_version, minimum_commitment=o.minimum_commitment,
                plan_definition=json.loads(o.plan_definition, parse_float=Decimal),
                charges=tuple(
                    Charge(c.metric_code, c.aggregation, c.model, json.loads(c.properties, parse_float=Decimal))
                    for c in charges
                ),
            )  # fmt: skip
            d = price_organisation(org, usage, [], period_start)
            invoice_id = conn.execute(
                sa.text(
                    "INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, plan_id,"
                    " plan_code, plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor,"
                    " credits_applied_minor, total_minor, build_id, created_by) VALUES (:o, :period_start,"
                    " :period_end, :c, :pid, :pc, :pv, CAST(:snap AS jsonb), :tax, :s, :d, :t, :cr, :tot, :b,"
                    " 'bench:loop') RETURNING invoice_id"
                ),
                {"o": org_id, "c": d.currency, "pid": d.plan_id, "pc": d.plan_code, "pv": d.plan_version,
                 "snap": dump_json(d.plan_snapshot), "tax": d.tax_rate, "s": d.subtotal_minor, "d": d.discount_minor,
                 "t": d.tax_minor, "cr": d.credits_applied_minor, "tot": d.total_minor, "b": build, **bounds},
            ).scalar_one()  # fmt: skip
            for line in d.lines:
                conn.execute(
                    sa.text(
                        "INSERT INTO billing.invoice_lines (invoice_id, kind, metric, aggregation, units, model,"
                        " amount_unrounded, amount_minor, charge)"
                        " VALUES (:i, :k, :m, :a, :u, :mo, :au, :am, CAST(:ch AS jsonb))"
                    ),
                    {"i": invoice_id, "k": line.kind, "m": line.metric, "a": line.aggregation, "u": line.units,
                     "mo": line.model, "au": line.amount_unrounded, "am": line.amount_minor,
                     "ch": dump_json(line.charge)},
                )  # fmt: skip
        conn.execute(sa.text("DELETE FROM billing.invoices WHERE build_id = :b"), {"b": build})
    return len(org_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--events-per-metric", type=int, default=4)
    parser.add_argument("--loop-sample", type=int, default=1_000, help="organisations the baseline loop prices")
    args = parser.parse_args()

    with bench_home() as settings:
        import dagster as dg

        from billing_pipeline.definitions import defs
        from billing_pipeline.invoicing import drafts
        from billing_pipeline.warehouse import get_engine

        engine = get_engine(settings)
        events = setup(engine, settings.edge_path, args.orgs, args.events_per_metric)

        with Timer() as loop:
            sample = per_organisation_loop(engine, MONTH, args.loop_sample)
        loop_seconds = loop.seconds * args.orgs / sample  # the same per-organisation cost, for all of them
        with Timer() as set_based:
            result = drafts.build_drafts(engine, MONTH, "bench:set")
        n = len(result.drafts)
        problems = sum(1 for d in result.drafts if d.problems)
        if n != args.orgs or problems:
            raise SystemExit(f"expected {args.orgs} clean drafts, got {n} with {problems} problem(s)")

        job = defs.resolve_job_def("monthly_invoicing_job")
        with Timer() as month_end:
            run = job.execute_in_process(
                instance=dg.DagsterInstance.ephemeral(), partition_key=MONTH.isoformat(), raise_on_error=False
            )
        with engine.connect() as conn:
            finalized = conn.execute(
                sa.text("SELECT count(*) FROM billing.invoices WHERE status = 'finalized'")
            ).scalar_one()
        if not run.success or finalized != args.orgs:
            failed = [e.check_name for e in run.get_asset_check_evaluations() if not e.passed]
            raise SystemExit(f"month-end job failed (checks failed: {failed}); {finalized} finalized")

        lines = sum(len(d.lines) for d in result.drafts)
        print(
            f"{args.orgs} organisations x {len(METRICS)} metrics, {events} events, {lines} lines;"
            f" baseline loop over {sample} organisations: {loop.seconds:.1f} s",
            file=sys.stderr,
        )
        report(BENCH, "pricing_and_write_s", set_based.seconds, "per_organisation_loop_s", loop_seconds)
        report(BENCH, "drafts_per_s", n / set_based.seconds, "per_organisation_loop_drafts_per_s", sample / loop.seconds)
        report(BENCH, "month_end_job_s", month_end.seconds, "per_organisation_loop_s", loop_seconds)


if __name__ == "__main__":
    main()
