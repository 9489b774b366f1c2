"""The wallet ledger on the real embedded PostgreSQL: debt limit, idempotency, refusals, concurrency."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import sqlalchemy as sa

from billing_pipeline.catalog import apply_catalog, parse_catalog
from billing_pipeline.wallet import ledger

ACTOR = "test:wallet"
CATALOG = """
billable_metrics: [{code: calls, name: Calls, aggregation: count}]
plans:
  - {code: usd, name: USD, currency: USD, charges: [{metric: calls, model: standard, unit_amount: 1}]}
  - {code: eur, name: EUR, currency: EUR, charges: [{metric: calls, model: standard, unit_amount: 1}]}
organisations:
  - id: acme
    name: Acme
    plan: usd
    currency: USD
    wallet: {debt_limit_minor: 500, recharge_threshold_minor: 1000}
  - {id: zeta, name: Zeta, plan: usd, currency: USD}
  - {id: euro, name: Euro, plan: eur, currency: EUR}
"""


@pytest.fixture
def orgs(engine):
    apply_catalog(engine, parse_catalog(CATALOG), source="test", applied_by=ACTOR)
    return engine


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def deduct(engine, amount: int, reference: str, org: str = "acme", currency: str = "USD"):
    with engine.begin() as conn:
        return ledger.deduct(conn, org, amount, currency, reference, actor=ACTOR)


def top_up(engine, amount: int, reference: str, org: str = "acme", currency: str = "USD"):
    with engine.begin() as conn:
        return ledger.top_up(conn, org, amount, currency, reference, actor=ACTOR)


def test_deduction_exactly_to_the_limit_succeeds_and_one_unit_more_changes_nothing(orgs):
    top_up(orgs, 1000, "pay_1")
    at_limit = deduct(orgs, 1500, "call_a")  # 1000 - 1500 = -500 = -debt_limit
    assert (at_limit.outcome, at_limit.balance_minor) == ("posted", -500)
    assert type(at_limit.balance_minor) is int  # minor units stay integers, never numeric/Decimal

    over = deduct(orgs, 1, "call_b")
    assert (over.outcome, over.reason, over.balance_minor) == ("refused", "debt_limit", -500)
    assert scalar(orgs, "SELECT balance_minor FROM billing.wallets WHERE organisation_id = 'acme'") == -500
    assert scalar(orgs, "SELECT count(*) FROM billing.wallet_entries") == 2
    with orgs.connect() as conn:
        refusal = conn.execute(sa.text("SELECT * FROM billing.wallet_refusals")).one()
    assert (refusal.reference, refusal.amount_minor, refusal.balance_minor, refusal.debt_limit_minor) == (
        "call_b",
        -1,
        -500,
        500,
    )
    assert "below the debt limit of -500" in refusal.detail
    actions = scalar(
        orgs,
        "SELECT string_agg(action, ',' ORDER BY audit_id) FROM billing.audit_log"
        " WHERE entity_id = 'acme' AND entity_type = 'wallet'",
    )
    assert actions == "top_up,recharged,call_charge,needs_recharge,call_charge_refused"


def test_batch_applies_credits_first_then_debits_in_order_up_to_the_limit(orgs):
    postings = [
        ledger.Posting("zeta", "call_charge", f"c{i}", -amount, "USD")
        for i, amount in enumerate([200, 250, 101, 1])  # default debt limit 500; 101 does not fit, and
    ] + [ledger.Posting("zeta", "top_up", "pay_z", 50, "USD")]  # 1 is not squeezed in after it
    with orgs.begin() as conn:
        results = ledger.post(conn, postings, actor=ACTOR)
    assert [r.outcome for r in results] == ["posted", "posted", "refused", "refused", "posted"]
    assert [r.balance_minor for r in results] == [-150, -400, -400, -400, 50]
    with orgs.connect() as conn:
        assert ledger.status(conn, "zeta").balance_minor == -400
        assert ledger.status(conn, "zeta").available_minor == 100


def test_deduction_is_idempotent_per_reference(orgs):
    top_up(orgs, 300, "pay_1")
    first = deduct(orgs, 120, "call_x")
    again = deduct(orgs, 120, "call_x")
    assert first.outcome == "posted" and again.outcome == "duplicate"
    assert again.entry_id == first.entry_id
    assert again.balance_minor == 180
    assert scalar(orgs, "SELECT count(*) FROM billing.wallet_entries WHERE kind = 'call_charge'") == 1
    assert top_up(orgs, 300, "pay_1").outcome == "duplicate"
    assert scalar(orgs, "SELECT balance_minor FROM billing.wallets WHERE organisation_id = 'acme'") == 180


def test_needs_recharge_follows_the_threshold(orgs):
    with orgs.connect() as conn:
        assert ledger.needs_recharge(conn, "acme")  # no wallet yet: balance 0 < threshold 1000
    assert not top_up(orgs, 1500, "pay_1").needs_recharge
    assert deduct(orgs, 501, "call_1").needs_recharge  # 999 < 1000
    with orgs.connect() as conn:
        assert ledger.needs_recharge(conn, "acme")
        assert not ledger.needs_recharge(conn, "zeta")  # threshold 0, balance 0


def test_currency_mismatch_is_refused_and_recorded(orgs):
    result = deduct(orgs, 10, "call_eu", org="euro", currency="USD")
    assert (result.outcome, result.reason, result.wallet_currency) == ("refused", "currency_mismatch", "EUR")
    assert scalar(orgs, "SELECT reason FROM billing.wallet_refusals WHERE organisation_id = 'euro'") == (
        "currency_mismatch"
    )
    assert scalar(orgs, "SELECT balance_minor FROM billing.wallets WHERE organisation_id = 'euro'") == 0


def test_bad_postings_raise_before_writing(orgs):
    with orgs.begin() as conn, pytest.raises(ValueError, match="no organisation 'ghost'"):
        ledger.deduct(conn, "ghost", 10, "USD", "c1", actor=ACTOR)
    with orgs.begin() as conn, pytest.raises(ValueError, match="a top-up is a credit"):
        ledger.post(conn, [ledger.Posting("acme", "top_up", "p", -5, "USD")], actor=ACTOR)
    with orgs.begin() as conn, pytest.raises(ValueError, match="positive int"):
        ledger.deduct(conn, "acme", 0, "USD", "c2", actor=ACTOR)
    assert scalar(orgs, "SELECT count(*) FROM billing.wallet_entries") == 0


HAND_INSERT = (
    "INSERT INTO billing.wallet_entries (organisation_id, kind, reference, amount_minor, currency, actor)"
)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "UPDATE billing.wallets SET balance_minor = 999999",
            "only by inserting into billing.wallet_entries",
        ),
        ("UPDATE billing.wallet_entries SET amount_minor = 1", "append-only"),
        ("DELETE FROM billing.wallet_entries", "append-only"),
        (
            HAND_INSERT + " VALUES ('acme', 'adjustment', 'by-hand', -1501, 'USD', 'psql')",
            "below its debt limit",
        ),
    ],
)
def test_database_keeps_balances_consistent_whoever_writes(orgs, sql, message):
    top_up(orgs, 1000, "pay_1")
    with pytest.raises(sa.exc.DBAPIError, match=message), orgs.begin() as conn:
        conn.execute(sa.text(sql))
    assert scalar(orgs, "SELECT balance_minor FROM billing.wallets WHERE organisation_id = 'acme'") == 1000
    assert scalar(orgs, "SELECT sum(amount_minor) FROM billing.wallet_entries") == 1000


def test_entries_inserted_by_hand_move_the_balance(orgs):
    top_up(orgs, 1000, "pay_1")
    top_up(orgs, 3, "pay_z", org="zeta")
    with orgs.begin() as conn:
        conn.execute(
            sa.text(
                HAND_INSERT + " VALUES ('acme', 'adjustment', 'a1', -1500, 'USD', 'psql'),"
                " ('zeta', 'top_up', 'p2', 7, 'USD', 'psql')"
            )
        )
    balances = dict(
        (row.organisation_id, row.balance_minor)
        for row in orgs.connect().execute(
            sa.text("SELECT organisation_id, balance_minor FROM billing.wallet_status")
        )
    )
    assert balances == {"acme": -500, "zeta": 10, "euro": 0}


# --- several processes deducting at once ---------------------------------------------------------

GATE = 424242  # advisory lock the parent holds until every worker is waiting on it
WORKERS, PER_WORKER, AMOUNT = 4, 25, 37
WAITING = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = :k"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _worker(url: str, worker: int) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock_shared(:k)"), {"k": GATE})
        conn.commit()  # the session-level lock stays; each deduction gets its own transaction
        outcomes = []
        for i in range(PER_WORKER):
            with conn.begin():
                result = ledger.deduct(conn, "acme", AMOUNT, "USD", f"w{worker}-{i}", actor=f"test:{worker}")
            outcomes.append(result.outcome)
        conn.execute(sa.text("SELECT pg_advisory_unlock_shared(:k)"), {"k": GATE})
    engine.dispose()
    return outcomes


def test_concurrent_deductions_from_processes_never_pass_the_limit(orgs, db_url):
    top_up(orgs, 1000, "pay_1")  # 1000 + debt limit 500 = 1500 available: 40 deductions of 37 fit
    with orgs.connect() as gate:
        gate.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": GATE})
        gate.commit()
        with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
            pending = pool.starmap_async(_worker, [(db_url, w) for w in range(WORKERS)])
            deadline = time.monotonic() + 60
            while scalar(orgs, WAITING, k=GATE) < WORKERS:
                assert time.monotonic() < deadline, "workers did not reach the gate"
                time.sleep(0.05)
            gate.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": GATE})
            gate.commit()
            outcomes = [o for worker in pending.get(timeout=120) for o in worker]

    assert outcomes.count("posted") == 1500 // AMOUNT == 40
    assert outcomes.count("refused") == WORKERS * PER_WORKER - 40
    with orgs.connect() as conn:
        balance = conn.execute(
            sa.text("SELECT balance_minor FROM billing.wallets WHERE organisation_id = 'acme'")
        ).scalar()
        entries = conn.execute(
            sa.text("SELECT sum(amount_minor), count(*) FROM billing.wallet_entries")
        ).one()
        refusals = conn.execute(sa.text("SELECT count(*) FROM billing.wallet_refusals")).scalar()
    assert balance == 1000 - 40 * AMOUNT == -480
    assert balance >= -500
    assert tuple(entries) == (balance, 41)
    assert refusals == 60


def test_cli_tops_up_adjusts_and_lists_refusals(orgs):
    from typer.testing import CliRunner

    from billing_pipeline.wallet.cli import wallet_app

    cli = CliRunner()
    topped = cli.invoke(wallet_app, ["top-up", "acme", "12.50", "--reference", "pay_cli"])
    assert topped.exit_code == 0 and "posted: acme balance 12.50 USD" in topped.output
    assert cli.invoke(wallet_app, ["top-up", "acme", "12.505", "--reference", "pay_x"]).exit_code == 2
    refused = cli.invoke(
        wallet_app, ["adjust", "--reason", "test", "--reference", "adj_1", "--", "acme", "-17.51"]
    )
    assert refused.exit_code == 1 and "refused (debt_limit)" in refused.output
    shown = cli.invoke(wallet_app, ["show", "acme"])
    assert "balance 12.50 USD" in shown.output and "recharge under 10.00 USD" in shown.output
    assert "NEEDS RECHARGE" not in shown.output and "pay_cli" in shown.output
    listed = cli.invoke(wallet_app, ["refusals", "--org", "acme"])
    assert "adj_1  debt_limit" in listed.output and "1 refusal(s)" in listed.output
