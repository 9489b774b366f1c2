"""Finalized invoices rendered once to PDF, read back with pypdf: number, every line, totals, and each
currency's decimals (JPY 0, USD 2, KWD 3); the stored sha256 proves the document unchanged."""

from __future__ import annotations

import io
from datetime import UTC

import pytest
import sqlalchemy as sa
from pypdf import PdfReader
from test_invoicing_support import OCT, close_month, invoices, lines
from typer.testing import CliRunner

from billing_pipeline.cli import app
from billing_pipeline.documents import invoices as documents
from billing_pipeline.documents import render

pytest_plugins = ["test_invoicing_support"]


def _text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_every_finalized_invoice_gets_one_pdf_with_its_lines_and_totals(october, tmp_path):
    engine = october
    close_month(engine, OCT)
    issued = invoices(engine, OCT)
    rendered = documents.render_documents(engine, "run:test", period_start=OCT)
    assert sorted(r.number for r in rendered) == sorted(i["number"] for i in issued.values())
    assert documents.render_documents(engine, "run:test", period_start=OCT) == []  # once only

    with engine.connect() as conn:
        names = dict(conn.execute(sa.text("SELECT code, name FROM billing.billable_metrics")).all())
    expected_decimals = {"USD": 2, "JPY": 0, "KWD": 3, "EUR": 2}
    for org, inv in issued.items():
        with engine.connect() as conn:
            pdf, digest = documents.stored_pdf(conn, inv["number"])
        assert render.sha256(pdf) == digest
        text = _text(pdf)
        currency = inv["currency"]
        total = render.money(inv["total_minor"], currency)
        decimals = expected_decimals[currency]
        assert (len(total.rpartition(".")[2]) if "." in total else 0) == decimals, total
        assert f"Invoice {inv['number']}" in text and f"Currency: {currency}" in text
        assert f"Total {total}" in text and f"Amount due {total}" in text, text
        assert "Dollar Co" in text if org == "org_usd" else True
        printed = text.splitlines()
        for line in lines(engine, inv["invoice_id"]).values():
            name = names.get(line["metric"], "Minimum commitment true-up")
            amount = render.money(line["amount_minor"], currency)
            assert sum(p.startswith(f"{name} ") and p.endswith(f" {amount}") for p in printed) == 1, (
                line,
                text,
            )
        if org == "org_usd":
            assert inv["discount_minor"] > 0 and inv["credits_applied_minor"] > 0 and inv["tax_minor"] > 0
            assert f"Discount launch -{render.money(inv['discount_minor'], currency)}" in text
            assert f"Credits applied -{render.money(inv['credits_applied_minor'], currency)}" in text
            assert f"Tax (20%) {render.money(inv['tax_minor'], currency)}" in text
            assert (  # seller and customer from the catalog
                "Metered Cloud GmbH" in text and "Torstrasse 1" in text and "Tax id: DE123456789" in text
                and "Dollar Company Inc." in text and "500 Market Street" in text and "Tax id: US-98-7654321" in text
                and "Customer id: org_usd" in text
                and "Period: 2026-10-01 to 2026-10-31" in text
            )

    jpy, usd, kwd = (issued[o]["number"] for o in ("org_jpy", "org_usd", "org_kwd"))
    assert "." not in render.money(issued["org_jpy"]["total_minor"], "JPY")
    assert render.money(1234567, "KWD") == "1,234.567" and render.money(1234567, "JPY") == "1,234,567"
    out = tmp_path / "usd.pdf"
    result = CliRunner().invoke(app, ["invoice", "pdf", usd, "-o", str(out)])
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        stored, digest = documents.stored_pdf(conn, usd)
        audited = conn.execute(
            sa.text(
                "SELECT count(*) FROM billing.audit_log WHERE action = 'document_rendered' AND entity_id = :n"
            ),
            {"n": kwd},
        ).scalar_one()
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            conn.execute(sa.text("UPDATE billing.invoice_documents SET pdf = pdf || '\\x00'::bytea"))
    assert out.read_bytes() == stored and digest in result.output and audited == 1
    missing = CliRunner().invoke(app, ["invoice", "pdf", "INV-1999-000001", "-o", str(tmp_path / "x.pdf")])
    assert missing.exit_code == 1 and "no finalized invoice" in missing.output
    assert jpy != usd


def test_rendering_is_deterministic_and_open_to_other_documents():
    from datetime import datetime
    from decimal import Decimal

    doc = render.Document(
        kind="credit_note",
        title="Credit note",
        number="CN-2026-000001",
        issued_at=datetime(2026, 11, 2, tzinfo=UTC),
        currency="KWD",
        seller=render.Party("Seller Ltd", ("1 Road",)),
        customer=render.Party("Dinar Co", ("org_kwd",)),
        lines=[render.Line("Tokens", Decimal(1000), Decimal("0.0005"), 500)],
        summary=[("Total", -500)],
        total_minor=-500,
    )
    first, second = render.render(doc), render.render(doc)
    assert first == second
    text = _text(first)
    assert (
        "Credit note CN-2026-000001" in text
        and "Tokens 1,000 0.0005 0.500" in text
        and "Total -0.500" in text
    )


def test_without_a_seller_documents_wait_for_the_catalog_then_render_with_it(engine, tmp_path):
    """Invoices finalized and a credit note issued while the catalog has no seller: nothing is rendered
    with made-up details; invoice_documents fails naming the fix; once the seller is applied, every
    missing document (the credit note too) is rendered with it."""
    from test_invoicing_support import CATALOG, close_month, ingest, october_events, setup_catalog

    from billing_pipeline.invoicing import credit_notes

    no_seller = CATALOG.split("billable_metrics:", 1)[1]
    setup_catalog(engine, "billable_metrics:" + no_seller)
    ingest(engine, october_events())
    from test_invoicing_support import fill_usage

    fill_usage(engine, OCT)
    close_month(engine, OCT)
    usd = invoices(engine, OCT)["org_usd"]
    note = credit_notes.issue(engine, usd["number"], reason="SLA", actor="t", amount_minor=100)
    with pytest.raises(documents.NoSeller, match="add a `seller:` section"):
        documents.render_documents(engine, "t", period_start=OCT)
    missing = CliRunner().invoke(app, ["invoice", "pdf", usd["number"], "-o", str(tmp_path / "u.pdf")])
    assert missing.exit_code == 1 and "no seller in the catalog" in missing.output

    setup_catalog(engine)  # the same catalog with its seller section
    rendered = documents.render_documents(engine, "t", period_start=OCT)
    assert note.number in {r.number for r in rendered} and usd["number"] in {r.number for r in rendered}
    with engine.connect() as conn:
        pdf, _ = documents.stored_pdf(conn, note.number, "credit_note")
    assert "Metered Cloud GmbH" in _text(pdf) and f"Credit note {note.number}" in _text(pdf)
    out = tmp_path / "cn.pdf"
    assert CliRunner().invoke(app, ["invoice", "pdf", note.number, "-o", str(out)]).exit_code == 0
    assert out.read_bytes() == pdf
