"""Finalization: gap-free numbers, immutable invoices (triggers), audit rows, and two racing processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from test_invoicing_support import DEC, NOV, OCT, close_month, event, fill_usage, ingest, invoices, utc

from billing_pipeline.invoicing import drafts, numbering

pytest_plugins = ["test_invoicing_support"]  # fixture: october


def test_numbers_are_gap_free_per_issuer_and_year_in_organisation_order(october):
    result = close_month(october, OCT, "cli:alice")
    year = result.closed_at.year
    assert [(i["organisation_id"], i["number"]) for i in result.invoices] == [
        (org, f"INV-{year}-{n:06d}")
        for n, org in enumerate(["org_eur", "org_idle", "org_jpy", "org_kwd", "org_usd"], start=1)
    ]
    got = invoices(october, OCT)
    assert {i["status"] for i in got.values()} == {"finalized"}
    assert {i["finalized_at"] for i in got.values()} == {result.closed_at}
    assert {i["finalized_by"] for i in got.values()} == {"cli:alice"}

    ingest(october, [event("nov", "org_jpy", "api_calls", 1, utc(2026, 11, 2))])
    fill_usage(october, NOV)
    nov = close_month(october, NOV)
    assert [i["number"] for i in nov.invoices] == [f"INV-{year}-000006", f"INV-{year}-000007", f"INV-{year}-000008"]

    # a rolled-back reservation gives its numbers back; another year or issuer starts at 1
    with october.connect() as conn:
        with conn.begin() as tx:
            assert numbering.reserve(conn, "INV", year, 3) == 9
            tx.rollback()
        with conn.begin():
            assert numbering.reserve(conn, "INV", year, 1) == 9
            assert numbering.reserve(conn, "INV", year + 1, 2) == 1
            assert numbering.reserve(conn, "EU", year, 1) == 1
    assert numbering.format_number("INV", 2027, 1234567) == "INV-2027-1234567"

    # a finalized month finalizes to nothing a second time
    again = close_month(october, OCT)
    assert again.already_closed and again.invoices == []


def test_audit_rows_name_the_actor_and_each_state_change(october):
    result = close_month(october, OCT, "run:abc123")
    with october.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT entity_type, action, from_state, to_state, actor, count(*) FROM billing.audit_log"
                " WHERE entity_type NOT IN ('organisation', 'seller', 'catalog_application') GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2"
            )
        ).all()
        detail = conn.execute(
            sa.text("SELECT detail FROM billing.audit_log WHERE action = 'finalized' AND entity_id = :i"),
            {"i": str(result.invoices[0]["invoice_id"])},
        ).scalar_one()
    assert rows == [
        ("invoice", "draft_created", None, "draft", "run:abc123", 5),
        ("invoice", "finalized", "draft", "finalized", "run:abc123", 5),
        ("invoice_period", "closed", "open", "closed", "run:abc123", 1),
    ]
    assert detail["number"] == result.invoices[0]["number"] and detail["period"] == "2026-10"


def refused(conn, statement: str, **params) -> str:
    with pytest.raises(sa.exc.DBAPIError) as info:
        with conn.begin_nested():
            conn.execute(sa.text(statement), params)
    assert isinstance(info.value.orig, psycopg.errors.RestrictViolation), info.value
    return str(info.value.orig)


def test_finalized_invoices_lines_and_late_events_reject_update_delete_and_additions(october):
    close_month(october, OCT)
    ingest(october, [event("late", "org_jpy", "api_calls", 1, utc(2026, 10, 9), utc(2026, 11, 2))])
    fill_usage(october, NOV)
    close_month(october, NOV)
    with october.connect() as conn, conn.begin():
        inv = conn.execute(
            sa.text("SELECT invoice_id FROM billing.invoices WHERE organisation_id = 'org_jpy' AND period_start = :p"),
            {"p": NOV},
        ).scalar_one()
        line = conn.execute(
            sa.text("SELECT line_id FROM billing.invoice_lines WHERE invoice_id = :i AND kind = 'late_usage'"),
            {"i": inv},
        ).scalar_one()
        assert "is finalized: UPDATE" in refused(conn, "UPDATE billing.invoices SET total_minor = 0 WHERE invoice_id = :i", i=inv)
        assert "is finalized: DELETE" in refused(conn, "DELETE FROM billing.invoices WHERE invoice_id = :i", i=inv)
        refused(conn, "UPDATE billing.invoices SET status = 'void' WHERE invoice_id = :i", i=inv)
        refused(conn, "UPDATE billing.invoice_lines SET amount_minor = 0 WHERE line_id = :l", l=line)
        refused(conn, "DELETE FROM billing.invoice_lines WHERE line_id = :l", l=line)
        refused(
            conn,
            "INSERT INTO billing.invoice_lines (invoice_id, kind, metric, amount_unrounded, amount_minor)"
            " VALUES (:i, 'usage', 'tokens', 1, 1)",
            i=inv,
        )
        refused(conn, "UPDATE billing.invoice_late_events SET quantity = 0 WHERE line_id = :l", l=line)
        refused(conn, "DELETE FROM billing.invoice_late_events WHERE line_id = :l", l=line)
        refused(conn, "TRUNCATE billing.invoices CASCADE")
        refused(conn, "DELETE FROM billing.invoice_periods")
        assert conn.execute(sa.text("SELECT count(*) FROM billing.invoice_late_events")).scalar() == 1

    # drafts stay editable and deletable
    ingest(october, [event("dec", "org_jpy", "api_calls", 1, utc(2026, 12, 2))])
    fill_usage(october, DEC)
    drafts.build_drafts(october, DEC, "cli:test")
    with october.begin() as conn:
        assert conn.execute(sa.text("UPDATE billing.invoices SET total_minor = 0 WHERE status = 'draft'")).rowcount == 3
        assert conn.execute(sa.text("DELETE FROM billing.invoices WHERE status = 'draft'")).rowcount == 3


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_invoicing_support import OCT, close_month
    from billing_pipeline.invoicing.finalize import FinalizationRefused
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine
    import great_expectations  # imported before the start line, so both processes start together

    engine = get_engine(load_settings())
    go = Path({go!r})
    (go.parent / ("ready-" + sys.argv[1])).touch()
    while not go.exists():
        time.sleep(0.005)
    try:
        result = close_month(engine, OCT, "cli:" + sys.argv[1])
        print("already_closed" if result.already_closed else f"finalized {{len(result.invoices)}}")
    except FinalizationRefused as exc:
        print("refused", exc)
    """
)


@pytest.mark.slow
def test_two_processes_closing_the_same_month_make_one_invoice_per_organisation(october, tmp_path):
    go = tmp_path / "go"
    script = RACER.format(tests=str(Path(__file__).parent), go=str(go))
    racers = [
        subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=os.environ.copy())  # fmt: skip
        for name in ("one", "two")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{name}").exists() for name in ("one", "two")):
        dead = [r.communicate()[1][-3000:] for r in racers if r.poll() is not None]
        assert not dead and time.monotonic() < deadline, dead or "a racer did not get ready"
        time.sleep(0.05)
    go.touch()  # both have imported everything: they start together
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], [err[-2000:] for _, err in outputs]
    statuses = sorted(out.strip().split(" ")[0] for out, _ in outputs)
    # one closes the month; the other finds it closed, or was refused because its drafts were replaced
    assert statuses.count("finalized") == 1 and set(statuses) <= {"finalized", "already_closed", "refused"}
    with october.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT organisation_id, count(*), min(number) FROM billing.invoices"
                " WHERE period_start = :p GROUP BY 1 ORDER BY 1"
            ),
            {"p": OCT},
        ).all()
        counter = conn.execute(sa.text("SELECT last_number FROM billing.invoice_number_counters")).scalar_one()
    assert [(org, n) for org, n, _ in rows] == [(o, 1) for o in ("org_eur", "org_idle", "org_jpy", "org_kwd", "org_usd")]
    assert sorted(number[-6:] for _, _, number in rows) == ["000001", "000002", "000003", "000004", "000005"]
    assert counter == 5
