"""Shared setup of the payments tests (no tests here): fake providers, the webhook app, invoices."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from billing_pipeline.api import webhooks_razorpay, webhooks_stripe
from billing_pipeline.fakes import razorpay_fake, stripe_fake
from billing_pipeline.fakes.server import Faults, serve_in_thread

SK = "sk_test_payments_0123456789"
STRIPE_SECRET = "whsec_test_current_0123456789abcdef"
STRIPE_PREVIOUS = "whsec_test_previous_0123456789abcdef"
RZP_ID, RZP_SECRET = "rzp_test_payments", "rzp_secret_0123456789"
RZP_WEBHOOK_SECRET = "rzp_webhook_secret_0123456789"
MONTH = date(2026, 10, 1)


def ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


@pytest.fixture
def faults() -> dict[str, Faults]:
    """The fault switches of the fake servers that `providers` serves (off until a test sets them)."""
    return {"stripe": Faults(), "razorpay": Faults()}


@pytest.fixture
def providers(db_url, monkeypatch, faults):
    """FAKE Stripe and Razorpay servers, with the settings pointing at them."""
    stripe_state = stripe_fake.FakeStripeState(api_key=SK)
    razorpay_state = razorpay_fake.FakeRazorpayState(RZP_ID, RZP_SECRET)
    with (
        serve_in_thread(stripe_fake.create_app(stripe_state), faults=faults["stripe"]) as stripe_url,
        serve_in_thread(razorpay_fake.create_app(razorpay_state), faults=faults["razorpay"]) as razorpay_url,
    ):
        for name, value in {
            "STRIPE_API_KEY": SK,
            "STRIPE_API_BASE": stripe_url,
            "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
            "RAZORPAY_KEY_ID": RZP_ID,
            "RAZORPAY_KEY_SECRET": RZP_SECRET,
            "RAZORPAY_API_BASE": razorpay_url,
            "RAZORPAY_WEBHOOK_SECRET": RZP_WEBHOOK_SECRET,
        }.items():
            monkeypatch.setenv(name, value)
        yield stripe_state, razorpay_state


def webhook_app() -> FastAPI:
    """The two webhook routers on an app shaped like api/app.py's (settings in app.state)."""
    from billing_pipeline.settings import load_settings

    app = FastAPI()
    app.state.settings = load_settings()
    for module in (webhooks_stripe, webhooks_razorpay):
        module.configure(app)
        app.include_router(module.router)
    return app


@pytest.fixture
def receiver(providers):
    """(base URL, app) of the webhook receiver served over loopback HTTP."""
    app = webhook_app()
    with serve_in_thread(app) as url:
        yield url, app


def add_customers(engine, orgs: dict[str, tuple[str, str, str]]) -> None:
    """Organisations {id: (provider, customer id, currency)} on a one-charge plan per currency."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO billing.billable_metrics (code, name, aggregation)"
                " VALUES ('api_calls', 'API calls', 'count') ON CONFLICT DO NOTHING"
            )
        )
        for currency in sorted({c for _, _, c in orgs.values()}):
            conn.execute(
                sa.text(
                    "INSERT INTO billing.plans (code, version, name, currency, definition, content_hash)"
                    " VALUES (:code, 1, :code, :currency, '{}', 'h') ON CONFLICT DO NOTHING"
                ),
                {"code": f"plan_{currency.lower()}", "currency": currency},
            )
        conn.execute(
            sa.text("""
            INSERT INTO billing.organisations (organisation_id, name, plan_code, plan_id, currency, provider,
                                               provider_customer_id, catalog_hash)
            SELECT o.id, o.id, p.code, p.plan_id, o.currency, o.provider, o.customer, 'h'
            FROM jsonb_to_recordset(CAST(:orgs AS jsonb))
                AS o(id text, provider text, customer text, currency text)
            JOIN billing.plans p ON p.code = 'plan_' || lower(o.currency)
        """),
            {
                "orgs": json.dumps(
                    [
                        {"id": k, "provider": p, "customer": c, "currency": cur}
                        for k, (p, c, cur) in orgs.items()
                    ]
                )
            },
        )


# What a finalized invoice row holds, by column (the invoicing schema is still moving: any other required
# column gets a neutral value of its type; the contract columns are the ones payments reads).
_INVOICE_VALUES = {
    "organisation_id": "o.organisation_id",
    "period_start": "CAST(:m AS date)",
    "period_end": "(CAST(:m AS date) + interval '1 month')::date",
    "currency": "o.currency",
    "status": "'finalized'",
    "total_minor": "x.total",
    "finalized_at": "now()",
    "number": "format('INV-%s-%s', extract(year FROM CAST(:m AS date)), lpad((:base + x.n)::text, 6, '0'))",
    "plan_id": "o.plan_id",
    "plan_code": "o.plan_code",
    "plan_version": "1",
    "subtotal_minor": "x.total",
    "build_id": ":b",
}
_NEUTRAL = {
    "text": "'test'",
    "character": "'x'",
    "jsonb": "'{}'",
    "json": "'{}'",
    "boolean": "false",
    "date": "CAST(:m AS date)",
    "timestamp with time zone": "now()",
    "uuid": ":b",
}


def add_invoices(engine, invoices: list[tuple[str, int]], month: date = MONTH) -> list[dict]:
    """Finalized invoices [(organisation_id, total_minor)] for `month`; returns id, number, org, total."""
    build = uuid.uuid4()
    with engine.begin() as conn:
        columns = conn.execute(
            sa.text("""
            SELECT column_name, data_type,
                   is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO'
                   AND is_generated = 'NEVER'
            FROM information_schema.columns WHERE table_schema = 'billing' AND table_name = 'invoices'
        """)
        ).all()
        values = {
            name: _INVOICE_VALUES.get(name) or _NEUTRAL.get(data_type, "0")
            for name, data_type, required in columns
            if required or name in ("status", "number", "finalized_at", "finalized_by")
        }
        if conn.execute(sa.text("SELECT to_regclass('billing.invoice_draft_builds')")).scalar():
            conn.execute(
                sa.text(
                    "INSERT INTO billing.invoice_draft_builds (build_id, period_start, built_by,"
                    " draft_count) VALUES (:b, :m, 'test', :n)"
                ),
                {"b": build, "m": month, "n": len(invoices)},
            )
        rows = (
            conn.execute(
                sa.text(f"""
            INSERT INTO billing.invoices ({", ".join(values)})
            SELECT {", ".join(values.values())}
            FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(n int, org text, total bigint)
            JOIN billing.organisations o ON o.organisation_id = x.org
            ORDER BY x.n
            RETURNING invoice_id, number, organisation_id, total_minor, currency
        """),
                {
                    "m": month,
                    "b": build,
                    "base": month.month * 1000,
                    "rows": json.dumps(
                        [{"n": i, "org": org, "total": total} for i, (org, total) in enumerate(invoices)]
                    ),
                },
            )
            .mappings()
            .all()
        )
    return sorted((dict(r) for r in rows), key=lambda r: r["number"])


def payments(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {
            r["object_id"]: dict(r)
            for r in conn.execute(sa.text("SELECT * FROM billing.payments ORDER BY payment_id")).mappings()
        }


def inbox(engine) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(sa.text("SELECT * FROM billing.webhook_inbox ORDER BY inbox_id")).mappings()
        ]
