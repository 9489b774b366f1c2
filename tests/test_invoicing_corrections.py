"""Credit notes and voids on a month closed by the real invoicing path: `invoice preview` of the closed
month and finance's `invoice export` show them; a voided invoice's late usage is billed again next month."""

from __future__ import annotations

import csv
import io

from test_invoicing_support import NOV, OCT, close_month, event, fill_usage, ingest, invoices, utc
from typer.testing import CliRunner

from billing_pipeline.invoicing import credit_notes, drafts, voids
from billing_pipeline.invoicing.cli import invoice_app
from billing_pipeline.invoicing.preview import preview_invoice, render_text

pytest_plugins = ["test_invoicing_support"]  # fixture: october


def test_preview_and_export_show_credit_notes_and_voids(october):
    close_month(october, OCT)
    issued = invoices(october, OCT)
    usd, eur = issued["org_usd"]["number"], issued["org_eur"]["number"]
    note = credit_notes.issue(october, usd, reason="SLA breach", actor="cli:finance", amount_minor=400)
    voids.void_invoice(october, eur, reason="billed to the wrong entity", actor="cli:finance", replace=True)

    text = render_text(preview_invoice(october, "org_usd", OCT))
    assert f"credit note {note.number} on {usd}: 4.00 USD (SLA breach)" in text
    assert f"{usd}: total 44.00 USD, credited 4.00 USD" in text and "due 40.00 USD" in text
    eur_text = render_text(preview_invoice(october, "org_eur", OCT))
    assert f"{eur}: void (billed to the wrong entity), replaced by INV-" in eur_text

    out = CliRunner().invoke(invoice_app, ["export", "--month", "2026-10"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.output)))
    by_number = {r["number"]: r for r in rows}
    assert by_number[note.number]["document"] == "credit_note"
    assert (by_number[note.number]["invoice_number"], by_number[note.number]["credited_minor"]) == (
        usd,
        "400",
    )
    assert (by_number[usd]["credited_minor"], by_number[usd]["due_minor"]) == ("400", "4000")
    assert (by_number[eur]["status"], by_number[eur]["due_minor"]) == ("void", "0")
    assert by_number[eur]["replaced_by"].startswith("INV-")
    assert len([r for r in rows if r["document"] == "invoice"]) == len(issued) + 1  # the replacement too


def test_late_usage_billed_on_a_voided_invoice_is_billed_again(october):
    close_month(october, OCT)
    ingest(october, [event("late-1", "org_usd", "tokens", 1000, utc(2026, 10, 9), utc(2026, 11, 2))])
    fill_usage(october, NOV)
    close_month(october, NOV)
    november = invoices(october, NOV)["org_usd"]
    voids.void_invoice(october, november["number"], reason="wrong plan", actor="t")
    # December's drafts pick the late event up again: it is on no non-void invoice any more
    from datetime import date

    dec = date(2026, 12, 1)
    fill_usage(october, dec)
    drafts.build_drafts(october, dec, "cli:test")
    with october.connect() as conn:
        import sqlalchemy as sa

        billed = conn.execute(
            sa.text(
                "SELECT i.period_start, i.status FROM billing.invoice_late_events e JOIN billing.invoice_lines l"
                " USING (line_id) JOIN billing.invoices i USING (invoice_id) WHERE e.event_id = 'late-1'"
                " ORDER BY i.period_start"
            )
        ).all()
    assert [(p.isoformat(), s) for p, s in billed] == [("2026-11-01", "void"), ("2026-12-01", "draft")]
