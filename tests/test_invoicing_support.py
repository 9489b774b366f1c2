"""Shared set-up for the invoicing tests: a catalog, events through the real edge store and mover,
and usage.usage_period.

usage.usage_period is the dbt model's table (dbt_project/models/marts/usage_period.sql). These tests
fill it with one SQL statement in the model's columns for count, sum, max, unique_count and latest
(the aggregations they use), so each test needs no dbt run; test_invoicing_dagster builds it with
the real dbt model once, end to end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from billing_pipeline import edge_store
from billing_pipeline.catalog import apply_catalog, parse_catalog
from billing_pipeline.ingestion.mover import move_window
from billing_pipeline.invoicing import checks, drafts, expectations, finalize
from billing_pipeline.settings import load_settings

OCT = date(2026, 10, 1)
NOV = date(2026, 11, 1)
DEC = date(2026, 12, 1)

CATALOG = """
seller:
  name: Metered Cloud GmbH
  address: [Torstrasse 1, 10119 Berlin, Germany]
  tax_id: DE123456789
  email: billing@metered.example
billable_metrics:
  - {code: api_calls, name: API calls, aggregation: count}
  - {code: tokens, name: Tokens, aggregation: sum}
  - {code: peak, name: Peak sessions, aggregation: max}
  - {code: payments, name: Payments, aggregation: sum}
  - {code: users, name: Active users, aggregation: unique_count, field: user_id}
plans:
  - code: usd_plan
    name: USD plan
    currency: USD
    minimum_commitment: 50
    charges:
      - {metric: api_calls, model: package, package_size: 100, amount: 2, free_units: 100}
      - {metric: tokens, model: standard, unit_amount: 0.0015}
      - {metric: peak, model: standard, unit_amount: 3}
  - code: pay_plan
    name: Payments plan
    currency: EUR
    charges:
      - {metric: payments, model: percentage, rate: 1.5, fixed_amount: 0.10, free_units_per_events: 1}
  - code: jpy_plan
    name: Yen plan
    currency: JPY
    charges:
      - {metric: api_calls, model: standard, unit_amount: 0.5}
  - code: kwd_plan
    name: Dinar plan
    currency: KWD
    charges:
      - {metric: tokens, model: standard, unit_amount: 0.0005}
      - {metric: users, model: standard, unit_amount: 0.25}
organisations:
  - id: org_usd
    name: Dollar Co
    plan: usd_plan
    currency: USD
    tax_rate: 0.2
    prepaid_credits_minor: 1000
    billing_details:
      legal_name: Dollar Company Inc.
      address: [500 Market Street, San Francisco CA 94105]
      tax_id: US-98-7654321
    discounts:
      - {code: launch, kind: percentage, value: 10, valid_from: 2026-10-01, valid_to: 2026-10-31}
  - {id: org_eur, name: Euro Co, plan: pay_plan, currency: EUR}
  - {id: org_jpy, name: Yen Co, plan: jpy_plan, currency: JPY}
  - {id: org_kwd, name: Dinar Co, plan: kwd_plan, currency: KWD}
  - {id: org_idle, name: Idle Co, plan: usd_plan, currency: USD}
"""


def setup_catalog(engine, text: str = CATALOG, *, created_at: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
    """Apply the catalog; organisations are dated back so they existed in the months tested."""
    apply_catalog(engine, parse_catalog(text), source="tests", applied_by="tests")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE billing.organisations SET created_at = :t"), {"t": created_at})


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def event(event_id, org, metric, quantity, occurred: datetime, received: datetime | None = None, props=None):
    """An edge row (COLUMNS order without processed_at)."""
    received = received or occurred
    return (
        event_id, org, "p1", metric, str(quantity), edge_store.utc_text(occurred), edge_store.utc_text(received),
        json.dumps(props) if props is not None else None,
    )  # fmt: skip


def ingest(engine, rows: Iterable[tuple]) -> None:
    """Write rows to the edge store and move them with the real mover (every received_at window)."""
    path = load_settings().edge_path
    with edge_store.opened(path) as edge:
        edge_store.insert_events(edge, list(rows))
        move_window(engine, edge, utc(2020, 1, 1), utc(2030, 1, 1))


def fill_usage(engine, period_start: date) -> None:
    """usage.usage_period for the month from billing.events, in the dbt model's columns."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            """
            CREATE TABLE IF NOT EXISTS usage.usage_period (
                organisation_id text, metric text, aggregation text, period_start date, period_end date,
                units numeric(38, 12), event_count bigint, opening_level numeric(38, 12),
                closing_level numeric(38, 12))
            """
        )
        conn.execute(sa.text("DELETE FROM usage.usage_period WHERE period_start = :p"), {"p": period_start})
        conn.execute(
            sa.text(
                """
                INSERT INTO usage.usage_period
                SELECT e.organisation_id, e.metric, m.aggregation, CAST(:p AS date),
                       (CAST(:p AS date) + interval '1 month')::date,
                       CASE m.aggregation WHEN 'count' THEN count(*) WHEN 'sum' THEN sum(e.quantity)
                            WHEN 'max' THEN max(e.quantity)
                            WHEN 'unique_count' THEN count(DISTINCT e.properties ->> m.field_name)
                            WHEN 'latest' THEN (array_agg(e.quantity ORDER BY e.occurred_at DESC))[1] END,
                       count(*), NULL, NULL
                FROM billing.events e JOIN billing.billable_metrics m ON m.code = e.metric
                WHERE e.occurred_at >= CAST(:p AS date)::timestamp AT TIME ZONE 'UTC'
                  AND e.occurred_at < (CAST(:p AS date) + interval '1 month')::timestamp AT TIME ZONE 'UTC'
                GROUP BY e.organisation_id, e.metric, m.aggregation
                """
            ),
            {"p": period_start},
        )


def october_events() -> list[tuple]:
    """org_usd: 250 calls, 10,000 tokens, peak 4; org_eur: payments 100, 250, 40; org_jpy: 3 calls;
    org_kwd: 1,001 tokens and 2 distinct users. org_idle: nothing."""
    rows = [event(f"usd-call-{i}", "org_usd", "api_calls", 1, utc(2026, 10, 1 + i % 28, 12)) for i in range(250)]
    rows += [event(f"usd-tok-{i}", "org_usd", "tokens", 2500, utc(2026, 10, 2 + i, 9)) for i in range(4)]
    rows += [event(f"usd-peak-{i}", "org_usd", "peak", q, utc(2026, 10, 5 + i, 9)) for i, q in enumerate((2, 4, 3))]
    rows += [
        event(f"eur-pay-{i}", "org_eur", "payments", q, utc(2026, 10, 3 + i, 10))
        for i, q in enumerate(("100", "250", "40"))
    ]
    rows += [event(f"jpy-call-{i}", "org_jpy", "api_calls", 1, utc(2026, 10, 7, 8 + i)) for i in range(3)]
    rows += [event("kwd-tok-0", "org_kwd", "tokens", 1001, utc(2026, 10, 9, 9))]
    rows += [
        event(f"kwd-user-{i}", "org_kwd", "users", 1, utc(2026, 10, 10, 9 + i), props={"user_id": u})
        for i, u in enumerate(("u1", "u2", "u1"))
    ]
    return rows


def close_month(engine, period_start: date, actor: str = "cli:test"):
    """Draft, check (SQL and GX, recorded), finalize: the month-end path without Dagster."""
    drafts.build_drafts(engine, period_start, actor)
    with edge_store.opened(load_settings().edge_path) as edge:
        build, outcomes = checks.run_sql_checks(engine, edge, period_start)
    checks.record_outcomes(engine, build, outcomes, actor)
    build, rules = expectations.validate_build(engine, period_start)
    checks.record_outcomes(engine, build, [rules], actor)
    return finalize.finalize_month(engine, period_start, actor)


def invoices(engine, period_start: date) -> dict[str, dict]:
    with engine.connect() as conn:
        return {
            r["organisation_id"]: dict(r)
            for r in conn.execute(
                sa.text("SELECT * FROM billing.invoices WHERE period_start = :p AND status <> 'void'"),
                {"p": period_start},
            ).mappings()
        }


def lines(engine, invoice_id: int) -> dict[tuple, dict]:
    with engine.connect() as conn:
        return {
            (r["kind"], r["metric"], r["original_period_start"]): dict(r)
            for r in conn.execute(
                sa.text("SELECT * FROM billing.invoice_lines WHERE invoice_id = :i"), {"i": invoice_id}
            ).mappings()
        }


@pytest.fixture()
def october(engine):
    setup_catalog(engine)
    ingest(engine, october_events())
    fill_usage(engine, OCT)
    return engine
