"""Shared setup of the accounts and operations tests (no tests here): organisations, finalized invoices,
provider payments through the payments domain's own ledger, the FAKE Stripe server, small receivers."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from billing_pipeline.fakes import stripe_fake
from billing_pipeline.fakes.server import serve_in_thread
from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import stripe_observation
from billing_pipeline.payments.settlement import settle_invoices

SK = "sk_test_accounts_0123456789"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_plan(conn, code: str = "basic", *, currency: str = "USD", grace_days: int = 7) -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO billing.plans (code, version, name, currency, grace_period_days, definition,"
            " content_hash) VALUES (:code, 1, :code, :currency, :grace, '{}', 'h') RETURNING plan_id"
        ),
        {"code": code, "currency": currency, "grace": grace_days},
    ).scalar_one()


def add_org(
    conn,
    org_id: str,
    plan_id: int,
    *,
    status: str = "active",
    provider: str = "stripe",
    customer: str | None = None,
    currency: str = "USD",
    trial_ends_at: datetime | None = None,
) -> None:
    """An organisation as `catalog apply` writes it (and the catalog's seller, once)."""
    conn.execute(sa.text(
        "INSERT INTO billing.seller (name, details)"
        " VALUES ('Test Seller Ltd', '{\"address\": [\"1 Test Road\"]}') ON CONFLICT DO NOTHING"
    ))  # fmt: skip
    conn.execute(
        sa.text("""
        INSERT INTO billing.organisations (organisation_id, name, plan_code, plan_id, currency, provider,
                                           provider_customer_id, trial_ends_at, status, catalog_hash)
        SELECT :id, :id, code, plan_id, :currency, :provider, :customer, :trial, :status, 'h'
        FROM billing.plans WHERE plan_id = :plan_id
    """),
        {
            "id": org_id,
            "plan_id": plan_id,
            "currency": currency,
            "provider": provider,
            "customer": customer,
            "trial": trial_ends_at,
            "status": status,
        },
    )


def add_invoice(conn, org_id: str, total_minor: int, *, month: str = "2026-02-01") -> dict:
    """A finalized invoice of the organisation's plan for the month."""
    build = uuid.uuid4()
    conn.execute(
        sa.text(
            "INSERT INTO billing.invoice_draft_builds (build_id, period_start, built_by, draft_count)"
            " VALUES (:b, :m, 'test', 1)"
        ),
        {"b": build, "m": month},
    )
    return dict(
        conn.execute(
            sa.text("""
        INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, status, number,
            plan_id, plan_code, plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor,
            tax_minor, credits_applied_minor, total_minor, build_id, created_by, finalized_at, finalized_by)
        SELECT o.organisation_id, CAST(:m AS date), (CAST(:m AS date) + interval '1 month')::date, o.currency,
               'finalized', 'INV-T-' || :n, o.plan_id, o.plan_code, 1, '{}', 0, :total, 0, 0, 0, :total, :b,
               'test', now(), 'test'
        FROM billing.organisations o WHERE o.organisation_id = :org
        RETURNING invoice_id, number, organisation_id, total_minor, currency
    """),
            {"m": month, "org": org_id, "total": total_minor, "b": build, "n": uuid.uuid4().hex[:8]},
        )
        .mappings()
        .one()
    )


def stripe_charge(
    invoice: dict,
    *,
    status: str,
    at: datetime,
    customer: str = "cus_x",
    amount: int | None = None,
    charge_id: str | None = None,
) -> dict:
    """A Stripe charge naming the invoice, as the API or a webhook shows it."""
    ok = status == "succeeded"
    return {
        "id": charge_id or f"ch_{uuid.uuid4().hex[:12]}",
        "object": "charge",
        "amount": amount if amount is not None else invoice["total_minor"],
        "amount_refunded": 0,
        "captured": ok,
        "currency": invoice["currency"].lower(),
        "status": status,
        "created": int(at.timestamp()),
        "customer": customer,
        "payment_intent": None,
        "refunded": False,
        "metadata": {"invoice_id": str(invoice["invoice_id"])},
    }


def record_charges(engine, *charges: dict) -> None:
    """Apply charges to billing.payments and settle invoices, as the payments domain does."""
    with engine.begin() as conn:
        apply_observations(conn, [Seen(stripe_observation(c)) for c in charges], via="webhook", actor="test")
        settle_invoices(conn, actor="test")


def rows(engine, sql: str, **params) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


def audit(engine, entity_type: str) -> list[tuple]:
    return [
        (r["entity_id"], r["action"], r["from_state"], r["to_state"])
        for r in rows(
            engine, "SELECT * FROM billing.audit_log WHERE entity_type = :t ORDER BY audit_id", t=entity_type
        )
    ]


def outbox(engine) -> list[dict]:
    return rows(engine, "SELECT * FROM billing.notification_outbox ORDER BY notification_id")


@pytest.fixture
def fake_stripe(db_url, monkeypatch):
    """(state, base URL) of a FAKE Stripe server; STRIPE_API_KEY/STRIPE_API_BASE point at it."""
    state = stripe_fake.FakeStripeState(api_key=SK)
    with serve_in_thread(stripe_fake.create_app(state)) as url:
        monkeypatch.setenv("STRIPE_API_KEY", SK)
        monkeypatch.setenv("STRIPE_API_BASE", url)
        yield state, url


class Receiver:
    """A loopback HTTP endpoint that records JSON POSTs; `fail_keys` answer 500 (by Idempotency-Key)."""

    def __init__(self):
        self.posts: list[tuple[dict, dict]] = []
        self.fail_keys: set[str] = set()
        self._lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/")
        async def receive(request: Request):
            body = json.loads(await request.body())
            with self._lock:
                self.posts.append((dict(request.headers), body))
            failed = request.headers.get("idempotency-key") in self.fail_keys
            return JSONResponse({"ok": not failed}, status_code=500 if failed else 200)


@pytest.fixture
def json_receiver():
    r = Receiver()
    with serve_in_thread(r.app) as url:
        r.url = url + "/"
        yield r
