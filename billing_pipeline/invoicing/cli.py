"""`billing-pipeline invoice ...`: invoicing commands for people (finance, on-call)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import typer

invoice_app = typer.Typer(no_args_is_help=True)


@invoice_app.callback()
def invoice() -> None:
    """Monthly invoices: preview what an organisation would be billed."""


@invoice_app.command("preview")
def preview(
    org: str = typer.Option(..., "--org", help="Organisation id, as in the catalog."),
    month: str = typer.Option(None, "--month", help="YYYY-MM; default: the current month (UTC)."),
    as_json: bool = typer.Option(False, "--json", help="Print the priced draft as JSON."),
) -> None:
    """The invoice ORG would get for the month so far, from current usage. Writes nothing."""
    from billing_pipeline.invoicing import periods
    from billing_pipeline.invoicing.preview import preview_invoice, render_json, render_text
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    try:
        period_start = periods.parse_month(month) if month else periods.month_start(datetime.now(timezone.utc).date())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from None
    try:
        result = preview_invoice(get_engine(load_settings()), org, period_start)
    except LookupError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render_json(result) if as_json else render_text(result))


@invoice_app.command("pdf")
def pdf(
    number: str = typer.Argument(..., help="The invoice number, e.g. INV-2026-000001."),
    out: Path = typer.Option(None, "-o", "--out", help="PDF file to write; default: NUMBER.pdf here."),
) -> None:
    """Write a finalized invoice's PDF (rendered once and kept with its sha256; rendered now if missing)."""
    from billing_pipeline.audit import cli_actor
    from billing_pipeline.documents import invoices as documents
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    engine = get_engine(load_settings())
    with engine.connect() as conn:
        stored = documents.stored_pdf(conn, number)
    if stored is None:
        documents.render_invoices(engine, cli_actor(), number=number)
        with engine.connect() as conn:
            stored = documents.stored_pdf(conn, number)
    if stored is None:
        typer.echo(f"error: no finalized invoice {number}", err=True)
        raise typer.Exit(1)
    data, digest = stored
    target = out or Path(f"{number}.pdf")
    target.write_bytes(data)
    typer.echo(f"{target}\tsha256 {digest}")
