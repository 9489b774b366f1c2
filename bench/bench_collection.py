"""Payment collection (issue 17): the first collection of a month's finalized invoices, against the
provider calls alone, measured in the same run.

N finalized invoices (default 10,000): 80% of organisations on Stripe (a confirmed off-session
PaymentIntent each), 20% on Razorpay (a Payment Link each, looked up by reference id first), through
the real `stripe` and `razorpay` SDKs against the project's FAKE servers on loopback (uvicorn in this
process). Figures:
  - collect_month_s: `payments.collection.collect_month` for the month (claim in one statement, the calls
    on CALL_THREADS threads, the results, payments, settlement, audit rows and outbox in one
    transaction), against direct_calls_s: the same requests (PaymentIntent create with its idempotency
    key; link look-up and create) sent on the same number of threads to a fresh pair of fakes, with no
    warehouse at all. The ratio is what the warehouse work adds to the provider round trips;
  - invoices_per_s: the same run as invoices per second.
A real provider answers in tens to hundreds of milliseconds, not the fakes' few: against it the calls
dominate and the thread count sets the pace.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402

BENCH = "collection"
MONTH = date(2026, 10, 1)
SK = "sk_test_bench_fake_key"
RZP_ID, RZP_SECRET = "rzp_test_benchfakekey", "bench_fake_secret"

_SEED = """
INSERT INTO billing.plans (code, version, name, currency, definition, content_hash)
VALUES ('bench_usd', 1, 'Bench USD', 'USD', '{}', 'h'), ('bench_inr', 1, 'Bench INR', 'INR', '{}', 'h');
INSERT INTO billing.organisations (organisation_id, name, plan_code, plan_id, currency, provider,
                                   provider_customer_id, status, catalog_hash)
SELECT 'org_' || lpad(g::text, 6, '0'), 'Org ' || g, p.code, p.plan_id, p.currency,
       CASE WHEN g % 5 = 0 THEN 'razorpay' ELSE 'stripe' END,
       CASE WHEN g % 5 = 0 THEN 'cust_' ELSE 'cus_' END || g, 'active', 'h'
FROM generate_series(1, :n) g
JOIN billing.plans p ON p.code = CASE WHEN g % 5 = 0 THEN 'bench_inr' ELSE 'bench_usd' END;
INSERT INTO billing.invoice_draft_builds (build_id, period_start, built_by, draft_count)
VALUES ('00000000-0000-0000-0000-000000000001', :month, 'bench', :n);
INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, status, number, plan_id,
    plan_code, plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor,
    credits_applied_minor, total_minor, build_id, created_by, finalized_at, finalized_by)
SELECT o.organisation_id, :month, (CAST(:month AS date) + interval '1 month')::date, o.currency, 'finalized',
       'INV-2026-' || lpad(row_number() OVER (ORDER BY o.organisation_id)::text, 6, '0'), o.plan_id, o.plan_code,
       1, '{}', 0, t.total, 0, 0, 0, t.total, '00000000-0000-0000-0000-000000000001', 'bench', now(), 'bench'
FROM billing.organisations o
CROSS JOIN LATERAL (SELECT 1000 + (hashtext(o.organisation_id) & 65535) AS total) t;
"""


def seed(engine: sa.Engine, n: int) -> list[dict]:
    with engine.begin() as conn:
        for statement in _SEED.split(";"):
            if statement.strip():
                conn.execute(sa.text(statement), {"n": n, "month": MONTH})
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "SELECT i.invoice_id, i.number, i.total_minor AS amount_minor, i.currency, o.provider,"
                    " o.provider_customer_id FROM billing.invoices i JOIN billing.organisations o"
                    " USING (organisation_id) ORDER BY i.invoice_id"
                )
            ).mappings()
        ]


def direct_calls(invoices: list[dict], stripe_url: str, rzp_url: str, threads: int) -> None:
    """The provider requests collection sends, with nothing around them."""
    from billing_pipeline.providers import razorpay_api, stripe_api

    stripe_client = stripe_api.make_client(SK, stripe_url)
    rzp = razorpay_api.make_client(RZP_ID, RZP_SECRET, rzp_url)
    expire_by = int(datetime.now(UTC).timestamp()) + 14 * 86400

    def call(inv: dict) -> None:
        if inv["provider"] == "stripe":
            stripe_client.v1.payment_intents.create(
                params={"amount": inv["amount_minor"], "currency": inv["currency"].lower(),
                        "customer": inv["provider_customer_id"], "confirm": True, "off_session": True,
                        "payment_method": "pm_card_visa", "metadata": {"invoice_id": str(inv["invoice_id"])}},
                options={"idempotency_key": f"direct:{inv['invoice_id']}"},
            )  # fmt: skip
        else:
            rzp.payment_link.all({"reference_id": inv["number"]})
            rzp.payment_link.create({"amount": inv["amount_minor"], "currency": inv["currency"],
                                     "reference_id": inv["number"], "expire_by": expire_by,
                                     "notes": {"invoice_id": str(inv["invoice_id"])}})  # fmt: skip

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(call, invoices))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=10_000)
    args = parser.parse_args()

    from billing_pipeline.accounts.clock import SystemClock
    from billing_pipeline.fakes import razorpay_fake, stripe_fake
    from billing_pipeline.fakes.server import serve_in_thread
    from billing_pipeline.payments.collection import CALL_THREADS, collect_month
    from billing_pipeline.providers import razorpay_api, stripe_api
    from billing_pipeline.warehouse import get_engine

    def fakes():
        return (serve_in_thread(stripe_fake.create_app(stripe_fake.FakeStripeState(api_key=SK))),
                serve_in_thread(razorpay_fake.create_app(razorpay_fake.FakeRazorpayState(RZP_ID, RZP_SECRET))))  # fmt: skip

    with bench_home() as settings:
        engine = get_engine(settings)
        invoices = seed(engine, args.invoices)
        stripe_cm, rzp_cm = fakes()
        with stripe_cm as stripe_url, rzp_cm as rzp_url, Timer() as direct:
            direct_calls(invoices, stripe_url, rzp_url, CALL_THREADS)
        stripe_cm, rzp_cm = fakes()
        with stripe_cm as stripe_url, rzp_cm as rzp_url, Timer() as collected:
            result = collect_month(
                engine,
                MONTH,
                stripe_client=stripe_api.make_client(SK, stripe_url),
                razorpay_client=razorpay_api.make_client(RZP_ID, RZP_SECRET, rzp_url),
                clock=SystemClock(),
                actor="bench",
            )
        counts = result.counts()
        expected = {"succeeded": sum(i["provider"] == "stripe" for i in invoices),
                    "link_sent": sum(i["provider"] == "razorpay" for i in invoices)}  # fmt: skip
        if counts != expected:
            raise SystemExit(f"collection outcome {counts}, expected {expected}")
        report(BENCH, "collect_month_s", collected.seconds, "direct_calls_s", direct.seconds)
        report(BENCH, "invoices_per_s", len(invoices) / collected.seconds, "direct_calls_per_s",
               len(invoices) / direct.seconds)  # fmt: skip


if __name__ == "__main__":
    main()
