"""month_close: per-currency figures that tie out (or fail the blocking check), written as HTML and XLSX."""

from __future__ import annotations

from datetime import UTC, date, datetime

import dagster as dg
import sqlalchemy as sa
from openpyxl import load_workbook
from test_invoicing_support import OCT, close_month, invoices

from billing_pipeline import closing
from billing_pipeline.definitions import defs
from billing_pipeline.settings import load_settings

pytest_plugins = ["test_invoicing_support"]


def _pay(engine, invoice, object_id, at, amounts):
    with engine.begin() as conn:
        payment_id = conn.execute(
            sa.text("""
            INSERT INTO billing.payments (provider, object_type, object_id, organisation_id, amount_minor, currency,
                status, status_rank, provider_status, provider_created_at, first_seen_via, raw)
            VALUES ('stripe', 'charge', :oid, :org, :amount, :currency, 'captured', 5, 'succeeded', :at, 'sync', '{}')
            RETURNING payment_id"""),
            {
                "oid": object_id,
                "org": invoice["organisation_id"],
                "amount": amounts[0],
                "currency": invoice["currency"],
                "at": at,
            },
        ).scalar_one()
        conn.execute(
            sa.text("""
            INSERT INTO billing.invoice_payments (invoice_id, payment_id, amount_minor, currency, rule, allocated_by)
            VALUES (:i, :p, :a, :c, 'reference', 'run:test')"""),
            [
                {"i": invoice["invoice_id"], "p": payment_id, "a": a, "c": invoice["currency"]}
                for a in amounts
            ],
        )


def test_month_close_ties_out_and_writes_the_report(october, settings):
    engine = october
    close_month(engine, OCT)
    issued = invoices(engine, OCT)
    usd, kwd = issued["org_usd"], issued["org_kwd"]
    _pay(engine, usd, "ch_1", "2026-10-29T10:00:00Z", [1500, -400])  # collected 15.00, refunded 4.00
    with engine.connect() as conn:
        close = closing.month_close(conn, OCT)
    by = {c.currency: c for c in close.currencies}
    assert close.ties_out and set(by) == {"USD", "EUR", "JPY", "KWD"}
    usd_total = sum(i["total_minor"] for i in issued.values() if i["currency"] == "USD")
    assert by["USD"].figures == {
        "invoiced": usd_total,
        "outstanding_end": usd_total - 1100,
        "collected": 1500,
        "refunded": 400,
    }
    assert by["KWD"].get("outstanding_start") == 0 and by["KWD"].get("outstanding_end") == kwd["total_minor"]

    result = (
        defs.resolve_job_def("__ASSET_JOB")
        .get_subset(asset_selection={dg.AssetKey("month_close")})
        .execute_in_process(instance=dg.DagsterInstance.ephemeral(), partition_key="2026-10-01")
    )
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    folder = load_settings().home_dir / "reports" / "2026-10"
    page = (folder / "month_close.html").read_text()
    assert "Ties out" in page
    assert f"${(usd_total - 1100) / 100:,.2f}" in page and "KWD" in page and "¥2" in page
    rows = list(load_workbook(folder / "month_close.xlsx").active.iter_rows(values_only=True))
    assert ("USD", "Collected", "$15.00", 1500) in rows and (
        "USD",
        "Difference (tie-out)",
        "$0.00",
        0,
    ) in rows
    assert any(
        r[0] == "KWD" and r[1] == "Invoiced" and r[2].endswith(f"{kwd['total_minor'] / 1000:.3f}")
        for r in rows
    )

    # a payment applied to an invoice before the month it bills (September, for October's invoice):
    # the roll-forward no longer ties out, and the blocking check says so
    _pay(engine, kwd, "ch_2", "2026-09-20T10:00:00Z", [500])
    with engine.connect() as conn:
        broken = {c.currency: c for c in closing.month_close(conn, OCT).currencies}
    assert broken["KWD"].difference == -500 and broken["USD"].difference == 0
    failed = (
        defs.resolve_job_def("__ASSET_JOB")
        .get_subset(asset_selection={dg.AssetKey("month_close")})
        .execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), partition_key="2026-10-01", raise_on_error=False
        )
    )
    (check,) = failed.get_asset_check_evaluations()
    assert not check.passed and check.metadata["KWD"].value == -500
    assert "DOES NOT TIE OUT" in (folder / "month_close.html").read_text()


def test_the_report_renders_in_headless_chromium(tmp_path):
    """The HTML report as a browser shows it: Chromium's rendered DOM has every currency's totals.
    A missing browser fails loudly (`make test` installs Debian's chromium)."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: run `make chromium` (Debian package chromium)"
    close = closing.MonthClose(
        OCT,
        [
            closing.CurrencyClose(
                "USD",
                {
                    "outstanding_start": 10000,
                    "invoiced": 123456,
                    "collected": 5000,
                    "outstanding_end": 128456,
                },
            ),
            closing.CurrencyClose("KWD", {"invoiced": 1234567, "outstanding_end": 1234567}),
            closing.CurrencyClose("JPY", {"invoiced": 98765, "outstanding_end": 98765}),
        ],
    )
    html_path, _ = closing.write_report(close, tmp_path)
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "Ties out" in dom
    for text in ("$1,234.56", "$1,284.56", "KWD1,234.567", "¥98,765", "$50.00"):
        assert text in dom, (text, dom[:2000])


def test_credit_notes_and_their_refunds_are_in_the_close_and_it_still_ties_out(october):
    from billing_pipeline.invoicing import credit_notes

    engine = october
    close_month(engine, OCT)
    issued = invoices(engine, OCT)
    usd = issued["org_usd"]
    _pay(engine, usd, "ch_1", "2026-10-29T10:00:00Z", [usd["total_minor"]])  # paid in full
    with engine.connect() as conn:
        before = {c.currency: c for c in closing.month_close(conn, OCT).currencies}["USD"]
    # credited back today, returned to the wallet: in this month's close, not October's
    credit_notes.issue(engine, usd["number"], reason="goodwill", actor="test", amount_minor=300, refund="wallet")
    this_month = datetime.now(UTC).date().replace(day=1)
    with engine.connect() as conn:
        after = {c.currency: c for c in closing.month_close(conn, OCT).currencies}["USD"]
        current = closing.month_close(conn, this_month)
    usd_now = {c.currency: c for c in current.currencies}["USD"]
    assert after.figures == before.figures
    assert current.ties_out and usd_now.get("credited") == 300 and usd_now.get("refunded") == 300
    assert usd_now.get("outstanding_end") == usd_now.get("outstanding_start")  # paid, so credited = refunded
