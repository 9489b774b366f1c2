"""Payments (issue 6), against baselines measured in the same run on the same rows.

Figures, for N = 1,000,000 (half Stripe charges, half Razorpay payments, one day, 0.4% injected
discrepancies):
  - reconcile_s: the day's N provider records loaded as the syncs land them (COPY into
    billing.provider_records) and reconciled by payment_reconciliation's SQL against the N payments
    already in the ledger (billing.payments), against python_dict: the same load, then both sides
    fetched into Python dicts, compared, and the findings COPYed into recon.discrepancies (target <= 10 s);
  - reconcile_sql_s: the reconciliation alone against the dict comparison alone (the dict runs second,
    on warm pages);
  - ledger_load_s: the N ledger rows COPYed into billing.payments (with its indexes) against the same
    COPY into an unindexed copy of the table (done before the timed part: a ledger grows over time);
  - webhook_p50_ms / webhook_p99_ms: 10,000 signed Stripe events POSTed one after another over loopback
    to the receiver (uvicorn in its own process, verified and stored in billing.webhook_inbox, each
    committed before the answer) against a no-op endpoint of the same app that only reads the body
    (target p99 <= 50 ms).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402
from fastapi import Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

BENCH = "payments"
DAY = date(2026, 11, 10)
SECRET = "whsec_bench_0123456789abcdef0123456789"


def _copy(engine, table: str, columns: str, data: str) -> None:
    with engine.begin() as conn:
        with conn.connection.driver_connection.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            copy.write(data)


def generate(n: int) -> tuple[str, str, int]:
    """(provider rows, ledger rows, expected findings) as COPY text: half Stripe charges, half Razorpay
    payments; per 1,000 ids one provider-only, one ledger-only, one amount and one state difference.

    The payments are authorizations, not captures: the invoice leg (captured money against finalized
    invoices, which this benchmark does not build) then has nothing to report, and the provider leg does
    the same work whatever the state."""
    start = datetime.combine(DAY, datetime.min.time(), UTC).timestamp()
    provider, ledger = io.StringIO(), io.StringIO()
    seen = datetime.combine(DAY, datetime.min.time(), UTC).isoformat()
    for i in range(n):
        name, kind, oid, cur = (
            ("stripe", "charge", f"ch_{i:08d}", "USD")
            if i % 2
            else ("razorpay", "payment", f"pay_{i:08d}", "INR")
        )
        at = datetime.fromtimestamp(start + i * 86_400 / n, UTC).isoformat()
        amount = 1000 + i % 5000
        provider.write(f"{name}\t{kind}\t{oid}\t{amount}\t0\t{cur}\tauthorized\tauthorized\t{at}\t{{}}\n")
        tag = i % 1000
        if tag == 1:  # the provider has it, the ledger does not: the ledger has a phantom instead
            oid = f"{oid}_phantom"
        state, rank = ("failed", 3) if tag == 4 else ("authorized", 2)
        if tag == 3:
            amount += 1
        ledger.write(
            f"{name}\t{kind}\t{oid}\t{amount}\t0\t{cur}\t{state}\t{rank}\t{state}\t{at}\t"
            f"webhook\t{seen}\t{{}}\n"
        )
    return provider.getvalue(), ledger.getvalue(), 4 * (n // 1000)


PROVIDER_COLUMNS = (
    "provider, object_type, object_id, amount_minor, amount_refunded_minor, currency, status,"
    " provider_status, created_at, raw"
)
LEDGER_COLUMNS = (
    "provider, object_type, object_id, amount_minor, amount_refunded_minor, currency, status,"
    " status_rank, provider_status, provider_created_at, first_seen_via, webhook_seen_at, raw"
)


def load_ledger(engine, ledger: str) -> tuple[float, float]:
    """The ledger (seconds into billing.payments, seconds into an unindexed copy of it); then vacuumed
    and analyzed as autovacuum leaves a ledger that grew over time."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE public.bench_unindexed (LIKE billing.payments INCLUDING DEFAULTS"
                " INCLUDING IDENTITY)"
            )
        )
    with Timer() as bare:
        _copy(engine, "public.bench_unindexed", LEDGER_COLUMNS, ledger)
    with Timer() as real:
        _copy(engine, "billing.payments", LEDGER_COLUMNS, ledger)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("DROP TABLE public.bench_unindexed"))
        conn.execute(sa.text("VACUUM (ANALYZE) billing.payments"))
    return real.seconds, bare.seconds


def load_provider(engine, provider: str) -> None:
    """What the day's syncs write: the provider records, and the synced day."""
    _copy(engine, "billing.provider_records", PROVIDER_COLUMNS, provider)
    with engine.begin() as conn:
        conn.execute(
            sa.text("""
            INSERT INTO billing.provider_syncs
                (provider, sync_date, window_start, window_end, counts, synced_by)
            SELECT p, :day, :day, CAST(:day AS date) + 1, '{}', 'bench'
            FROM unnest(ARRAY['stripe', 'razorpay']) p
        """),
            {"day": DAY},
        )


def reconcile_sql(engine) -> int:
    from billing_pipeline.payments.reconciliation import reconcile_payments

    with engine.begin() as conn:
        return reconcile_payments(conn, DAY, DAY + timedelta(days=1)).findings


def reconcile_dict(engine) -> int:
    """The same comparison in Python: fetch both sides, compare in dicts, write the findings."""
    window = {"s": datetime.combine(DAY, datetime.min.time(), UTC)}
    window["e"] = window["s"] + timedelta(days=1)
    with engine.begin() as conn:
        prov = {
            (r[0], r[1]): r
            for r in conn.execute(
                sa.text(
                    "SELECT provider, object_id, amount_minor, currency, status, amount_refunded_minor,"
                    " created_at"
                    " FROM billing.provider_records WHERE created_at >= :s AND created_at < :e"
                ),
                window,
            )
        }
        led = {
            (r[0], r[1]): r
            for r in conn.execute(
                sa.text(
                    "SELECT provider, object_id, amount_minor, currency, status, amount_refunded_minor,"
                    " provider_created_at, webhook_seen_at FROM billing.payments"
                    " WHERE provider_created_at >= :s AND provider_created_at < :e"
                ),
                window,
            )
        }
        out = io.StringIO()
        for key, p in prov.items():
            mine = led.get(key)
            if mine is None or mine[7] is None:
                out.write(
                    f"{DAY}\tbench_dict\tmissing_internal\t{key[0]}\t{key[1]}\t\\N\t{p[2]}\t{p[3]}\tx\n"
                )
            if mine is None:
                continue
            if mine[2] != p[2] or mine[3] != p[3]:
                out.write(
                    f"{DAY}\tbench_dict\tamount_mismatch\t{key[0]}\t{key[1]}\t{mine[2]}\t{p[2]}\t{p[3]}\tx\n"
                )
            if mine[4] != p[4] or mine[5] != p[5]:
                out.write(
                    f"{DAY}\tbench_dict\tstatus_mismatch\t{key[0]}\t{key[1]}\t{mine[2]}\t{p[2]}\t{p[3]}\tx\n"
                )
        for key, mine in led.items():
            if key not in prov:
                out.write(
                    f"{DAY}\tbench_dict\tmissing_at_provider\t{key[0]}\t{key[1]}\t{mine[2]}\t\\N\t{mine[3]}\tx\n"
                )
        data = out.getvalue()
        with conn.connection.driver_connection.cursor().copy(
            "COPY recon.discrepancies (recon_date, source, kind, provider, reference, internal_amount_minor,"
            " provider_amount_minor, currency, detail) FROM STDIN"
        ) as copy:
            copy.write(data)
        return data.count("\n")


# -- webhook receiver latency ---------------------------------------------------------------------------
def webhook_app():
    """The API app with the Stripe webhook router and a no-op endpoint as the baseline (uvicorn --factory)."""
    from billing_pipeline.api import app as api_app
    from billing_pipeline.api import webhooks_stripe

    app = api_app.create_app()
    if "billing_pipeline.api.webhooks_stripe" not in api_app.ROUTERS:
        webhooks_stripe.configure(app)
        app.include_router(webhooks_stripe.router)

    @app.post("/bench/noop")
    async def noop(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"received": True, "duplicate": False})

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def latencies(url: str, posts: int, path: str) -> list[float]:
    from billing_pipeline.fakes.stripe_fake import stripe_signature_header

    out = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(posts):
            body = (
                b'{"id":"evt_bench_%s_%08d","object":"event","type":"charge.succeeded","created":1,'
                b'"data":{"object":{"object":"charge","id":"ch_%08d","amount":1000,"currency":"usd",'
                b'"status":"succeeded","created":1}}}' % (path.encode()[-4:], i, i)
            )
            headers = {
                "Content-Type": "application/json",
                "Stripe-Signature": stripe_signature_header(body, SECRET),
            }
            t0 = time.perf_counter()
            answer = client.post(path, content=body, headers=headers)
            out.append((time.perf_counter() - t0) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:200]}")
    return out


def webhook_latency(settings, posts: int) -> None:
    from billing_pipeline.warehouse import database_url

    port = _free_port()
    env = {
        **os.environ,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "BILLING_DATABASE_URL": database_url(settings).render_as_string(hide_password=False),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench_payments:webhook_app",
            "--factory",
            "--app-dir",
            str(Path(__file__).resolve().parent),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(f"{url}/bench/noop", content=b"{}")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the webhook receiver did not start") from None
                time.sleep(0.2)
        latencies(url, 200, "/webhooks/stripe")  # warm-up: connections, prepared plans
        base = latencies(url, posts, "/bench/noop")
        real = latencies(url, posts, "/webhooks/stripe")
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name, q in (("p50", 49), ("p99", 98)):
        report(
            BENCH,
            f"webhook_{name}_ms",
            statistics.quantiles(real, n=100)[q],
            "noop_endpoint",
            statistics.quantiles(base, n=100)[q],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--posts", type=int, default=10_000)
    args = parser.parse_args()
    from billing_pipeline.warehouse import get_engine

    provider, ledger, expected = generate(args.records)
    with bench_home() as settings:
        engine = get_engine(settings)
        ledger_s, unindexed_s = load_ledger(engine, ledger)
        with Timer() as loading:
            load_provider(engine, provider)
        with Timer() as by_sql:
            found = reconcile_sql(engine)
        with Timer() as by_dict:  # runs second: the provider records' pages are warm for it
            found_dict = reconcile_dict(engine)
        if not found == found_dict == expected:
            raise SystemExit(f"findings differ: sql {found}, dict {found_dict}, injected {expected}")
        report(
            BENCH,
            "reconcile_s",
            loading.seconds + by_sql.seconds,
            "python_dict",
            loading.seconds + by_dict.seconds,
        )
        report(BENCH, "reconcile_sql_s", by_sql.seconds, "python_dict", by_dict.seconds)
        report(BENCH, "ledger_load_s", ledger_s, "unindexed_copy", unindexed_s)
        webhook_latency(settings, args.posts)


if __name__ == "__main__":
    main()
