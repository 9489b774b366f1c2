"""A dependency that is down: providers answering 500, 429 with Retry-After, or not at all, and the
warehouse going away mid-run. Real SDKs over HTTP to the fakes, with the fakes' fault switches.

Each case: the call is retried a bounded number of times with backoff (tenacity, providers/retry.py),
then the run fails naming the provider and the window, with nothing of the window written; the next
run, with the provider back, catches up the whole window with nothing lost or doubled.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from test_accounts_support import SK as ACCOUNTS_SK
from test_accounts_support import add_invoice, add_org, add_plan, record_charges, rows, stripe_charge, utc
from test_payments_support import payments

from billing_pipeline.accounts.clock import FixedClock
from billing_pipeline.accounts.dunning import run_dunning
from billing_pipeline.accounts.grace import run_grace
from billing_pipeline.fakes import vapi_fake
from billing_pipeline.fakes.server import Faults, serve_in_thread
from billing_pipeline.payments import sync
from billing_pipeline.providers.stripe_api import make_client
from billing_pipeline.providers.vapi_api import VapiClient, VapiError
from billing_pipeline.settings import load_settings

pytest_plugins = ["test_payments_support", "test_accounts_support"]
pytestmark = pytest.mark.slow
DAY = datetime(2026, 11, 10, tzinfo=UTC)
NEXT = datetime(2026, 11, 11, tzinfo=UTC)
T = int(DAY.timestamp())
ATTEMPTS = 3


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("BILLING_PROVIDER_MAX_ATTEMPTS", str(ATTEMPTS))
    monkeypatch.setenv("BILLING_PROVIDER_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("BILLING_PROVIDER_TIMEOUT_SECONDS", "0.5")


def _count(engine, sql: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def _written(engine) -> tuple[int, int, int]:
    return (
        _count(engine, "SELECT count(*) FROM billing.provider_records"),
        _count(engine, "SELECT count(*) FROM billing.payments"),
        _count(engine, "SELECT count(*) FROM billing.provider_syncs"),
    )


def _charges(state, n: int) -> None:
    for i in range(n):
        state.add_charge(1000 + i, "usd", customer="cus_1", created=T + 60 * i)


def test_stripe_down_fails_the_sync_naming_it_and_the_window_then_the_next_run_catches_up(
    providers, faults, engine
):
    state, _ = providers
    _charges(state, 150)  # two pages
    faults["stripe"].set(status=500)

    with pytest.raises(sync.SyncFailed) as failed:
        sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:1")

    message = str(failed.value)
    assert "stripe sync of the window 2026-11-07 00:00 .. 2026-11-11 00:00 UTC failed" in message
    assert f"failed {ATTEMPTS} time(s)" in message and "500" in message
    assert faults["stripe"].faulted == ATTEMPTS  # bounded: no more requests than the policy allows
    assert _written(engine) == (0, 0, 0)  # nothing of the window

    faults["stripe"].clear()
    result = sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:2")
    assert result.counts["charge"] == 150 and result.applied.recorded == 150
    assert _written(engine) == (150, 150, 1)


def test_a_429_is_retried_after_the_time_it_asks_for(providers, faults, engine):
    state, _ = providers
    _charges(state, 3)
    faults["stripe"].set(status=429, retry_after="1", times=2)

    started = time.monotonic()
    result = sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:1")

    assert time.monotonic() - started >= 2.0  # two waits of Retry-After: 1 s, not the 0.01 s backoff
    assert result.counts["charge"] == 3 and faults["stripe"].faulted == 2
    assert len(state.requests_to("/v1/charges", "GET")) == 1  # the fake recorded only the answered one


def test_stripe_stops_answering_mid_listing_times_out_and_the_rerun_doubles_nothing(providers, faults, engine):
    state, _ = providers
    _charges(state, 250)  # three pages of charges
    faults["stripe"].set(delay=3.0, after=1)  # the first page, then nothing within the timeout

    with pytest.raises(sync.SyncFailed, match="stripe sync of the window") as failed:
        sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:1")
    assert "stripe unavailable" in str(failed.value) and "APIConnectionError" in str(failed.value)
    assert _written(engine) == (0, 0, 0)  # the first page was read, nothing was written

    faults["stripe"].clear()
    sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:2")
    sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:3")
    assert _written(engine) == (250, 250, 1)
    assert sorted(p["amount_minor"] for p in payments(engine).values()) == [1000 + i for i in range(250)]


def test_razorpay_recovers_within_the_retries_and_fails_by_name_when_it_stays_down(providers, faults, engine):
    _, rzp = providers
    for n in range(120):
        rzp.add_payment(100 + n, created_at=T + 100 + n, customer_id="cust_1")
    faults["razorpay"].set(status=503, after=1, times=ATTEMPTS - 1)  # the second page fails twice

    result = sync.sync_razorpay(engine, sync.razorpay_client(load_settings()), DAY, NEXT, actor="run:1")
    assert result.counts["payment"] == 120 and faults["razorpay"].faulted == ATTEMPTS - 1

    faults["razorpay"].set(status=500)
    with pytest.raises(sync.SyncFailed, match="razorpay sync of the window 2026-11-07 00:00 .. 2026-11-11"):
        sync.sync_razorpay(engine, sync.razorpay_client(load_settings()), DAY, NEXT, actor="run:2")
    assert faults["razorpay"].faulted == ATTEMPTS
    assert _count(engine, "SELECT count(*) FROM billing.payments") == 120  # the first run's, not doubled


def test_the_warehouse_going_away_mid_write_leaves_nothing_half_applied(providers, engine):
    state, _ = providers
    _charges(state, 20)
    with engine.begin() as conn:  # the last statement of the sync's transaction loses its connection
        conn.execute(sa.text("""
            CREATE FUNCTION billing.test_drop_connection() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
            CREATE TRIGGER drop_connection AFTER INSERT ON billing.provider_syncs
                FOR EACH STATEMENT EXECUTE FUNCTION billing.test_drop_connection();
        """))

    with pytest.raises(sa.exc.OperationalError, match="terminat"):
        sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:1")
    assert _written(engine) == (0, 0, 0)

    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER drop_connection ON billing.provider_syncs"))
    sync.sync_stripe(engine, sync.stripe_client(load_settings()), DAY, NEXT, actor="run:2")
    assert _written(engine) == (20, 20, 1)


def test_the_daily_job_fails_with_the_provider_and_window_and_the_next_run_completes(providers, faults, engine):
    from billing_pipeline.definitions import defs

    state, _ = providers
    _charges(state, 5)
    faults["stripe"].set(status=502)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("payments_daily_job")

    failed = job.execute_in_process(partition_key="2026-11-10", instance=instance, raise_on_error=False)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE" and e.step_key == "stripe_sync"]
    assert "stripe sync of the window 2026-11-07 00:00 .. 2026-11-11 00:00 UTC failed" in (
        failure.event_specific_data.error.message
    )

    faults["stripe"].clear()
    assert job.execute_in_process(partition_key="2026-11-10", instance=instance).success
    assert _count(engine, "SELECT count(*) FROM billing.payments WHERE provider = 'stripe'") == 5


def test_dunning_with_stripe_down_keeps_its_attempts_pending_and_charges_once_when_back(engine, db_url, monkeypatch):
    from billing_pipeline.fakes import stripe_fake

    state, stripe_faults = stripe_fake.FakeStripeState(api_key=ACCOUNTS_SK), Faults()
    failed_at = utc(2026, 3, 3, 10)
    with serve_in_thread(stripe_fake.create_app(state), faults=stripe_faults) as url:
        with engine.begin() as conn:
            add_org(conn, "acme", add_plan(conn, "plan_acme"), provider="stripe", customer="cus_acme")
            invoice = add_invoice(conn, "acme", 5000)
        record_charges(engine, stripe_charge(invoice, status="failed", at=failed_at, customer="cus_acme"))
        run_grace(engine, as_of=failed_at + timedelta(hours=1), actor="test")
        clock = FixedClock(failed_at + timedelta(days=1, hours=1))

        def dun():
            return run_dunning(engine, make_client(ACCOUNTS_SK, url), as_of=clock.now(), clock=clock,
                               actor="test", retry_days=[1, 3, 5, 7])

        stripe_faults.set(status=500)
        down = dun()
        assert down.unavailable and "stripe unavailable" in down.unavailable[0]
        assert down.counts()["pending"] == 1 and stripe_faults.faulted == ATTEMPTS
        assert state.all("payment_intents") == []

        stripe_faults.clear()
        back = dun()
        assert back.unavailable == [] and back.counts()["succeeded"] == 1
        (attempt,) = rows(engine, "SELECT * FROM billing.dunning_attempts")
        assert attempt["status"] == "succeeded" and len(state.all("payment_intents")) == 1


def test_vapi_down_then_slow_then_back(db_url):
    state = vapi_fake.FakeVapiState()
    state.add_call(created_at=DAY + timedelta(hours=1))
    faults = Faults()
    with serve_in_thread(vapi_fake.create_app(state, "vapi-key"), faults=faults) as url:
        faults.set(status=503)
        with VapiClient("vapi-key", base_url=url) as client, pytest.raises(VapiError, match="HTTP 503"):
            client.list_calls(DAY, NEXT)
        assert faults.faulted == ATTEMPTS

        faults.set(delay=2.0)  # slower than the 0.5 s timeout: a transport error, retried, then named
        with VapiClient("vapi-key", base_url=url) as client, pytest.raises(VapiError, match=f"in {ATTEMPTS} attempt"):
            client.list_calls(DAY, NEXT)

        faults.clear()
        with VapiClient("vapi-key", base_url=url) as client:
            assert len(client.list_calls(DAY, NEXT)) == 1
