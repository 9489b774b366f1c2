"""`billing-pipeline invoice ...`: invoicing commands for people (finance, on-call)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import typer

invoice_app = typer.Typer(no_args_is_help=True)


@invoice_app.callback()
def invoice() -> None:
    """Monthly invoices: preview what an organisation would be billed; credit notes and voids."""


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


def _invoice_currency(engine, number: str) -> str:
    import sqlalchemy as sa

    with engine.connect() as conn:
        currency = conn.execute(
            sa.text("SELECT currency FROM billing.invoices WHERE number = :n"), {"n": number}
        ).scalar_one_or_none()
    if currency is None:
        typer.echo(f"error: no invoice {number}", err=True)
        raise typer.Exit(1)
    return currency


@invoice_app.command("credit")
def credit(
    number: str = typer.Argument(..., help="The finalized invoice's number, e.g. INV-2026-000001."),
    reason: str = typer.Option(..., "--reason", help="Why (kept on the credit note and in the audit log)."),
    line: list[int] = typer.Option(None, "--line", help="Credit this invoice line (repeatable); with tax."),
    amount: str = typer.Option(None, "--amount", help="Credit this amount in the invoice's currency (12.34)."),
    refund: str = typer.Option(
        None, "--refund", help="What was paid goes back: 'provider' (the payment's provider) or 'wallet'."
    ),
    actor: str = typer.Option(None, "--actor", help="Who (audit log); default cli:<user>."),
) -> None:
    """Issue a credit note against a finalized invoice: the whole invoice (default), chosen lines, or an
    amount. It lowers what is due; what was already paid is refunded as --refund says."""
    from decimal import Decimal, InvalidOperation

    from billing_pipeline.audit import cli_actor
    from billing_pipeline.invoicing import credit_notes
    from billing_pipeline.money import from_minor, to_minor
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    settings = load_settings()
    engine = get_engine(settings)
    who = actor or cli_actor()
    minor = None
    currency = _invoice_currency(engine, number)
    if amount is not None:
        try:
            value = Decimal(amount)
            minor = to_minor(value, currency)
        except (InvalidOperation, ValueError):
            raise typer.BadParameter(f"{amount!r} is not an amount", param_hint="--amount") from None
        if from_minor(minor, currency) != value:
            raise typer.BadParameter(
                f"{amount} has more decimals than {currency} allows", param_hint="--amount"
            )
    try:
        note = credit_notes.issue(engine, number, reason=reason, actor=who, line_ids=line or None,
                                  amount_minor=minor, refund=refund)
    except credit_notes.CreditNoteError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    via = f" via {note.refund_method}" if note.refund_method else ""
    typer.echo(
        f"{note.number}: {from_minor(note.amount_minor, currency)} {currency} credited on {number} "
        f"({from_minor(note.applied_minor, currency)} off the amount due, "
        f"{from_minor(note.refund_minor, currency)} refunded{via})"
    )
    if note.refund and note.refund["status"] == "pending":
        clients = _provider_clients(settings)
        (sent,) = credit_notes.send_refunds(
            engine, stripe_client=clients["stripe"], razorpay_client=clients["razorpay"], actor=who,
            credit_note_id=note.credit_note_id,
        ) or [{"status": "pending", "error_message": "not sent"}]
        error = f": {sent['error_message']}" if sent.get("error_message") else ""
        typer.echo(f"refund {sent['status']}{error}")
        if sent["status"] == "failed":
            raise typer.Exit(1)


def _provider_clients(settings) -> dict:
    from billing_pipeline.payments import sync

    clients = {}
    for name, make in (("stripe", sync.stripe_client), ("razorpay", sync.razorpay_client)):
        try:
            clients[name] = make(settings)
        except sync.SyncNotConfigured:
            clients[name] = None
    return clients


@invoice_app.command("send-refunds")
def send_refunds(
    actor: str = typer.Option(None, "--actor", help="Who (audit log); default cli:<user>."),
) -> None:
    """Send again every credit-note refund still pending (a run stopped between the provider call and its
    recording): the same request with the same idempotency key, so the provider refunds once."""
    from billing_pipeline.audit import cli_actor
    from billing_pipeline.invoicing import credit_notes
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    settings = load_settings()
    clients = _provider_clients(settings)
    sent = credit_notes.send_refunds(
        get_engine(settings), stripe_client=clients["stripe"], razorpay_client=clients["razorpay"],
        actor=actor or cli_actor(),
    )
    for row in sent:
        typer.echo(f"refund {row['refund_id']} (credit note {row['credit_note_id']}): {row['status']}"
                   + (f" ({row['error_message']})" if row.get("error_message") else ""))
    typer.echo(f"{len(sent)} pending refunds sent")
    if any(r["status"] == "failed" for r in sent):
        raise typer.Exit(1)


@invoice_app.command("void")
def void(
    number: str = typer.Argument(..., help="The finalized, unpaid invoice's number."),
    reason: str = typer.Option(..., "--reason", help="Why (kept with the void and in the audit log)."),
    replace: bool = typer.Option(False, "--replace", help="Issue a replacement invoice (same lines unless --units)."),
    units: list[str] = typer.Option(
        [], "--units", metavar="METRIC=UNITS",
        help="With --replace: the corrected units of a metric (repeatable); the replacement is priced again.",
    ),
    actor: str = typer.Option(None, "--actor", help="Who (audit log); default cli:<user>."),
) -> None:
    """Void a finalized, unpaid invoice: its number stays used, its late usage becomes billable again."""
    from decimal import Decimal, InvalidOperation

    from billing_pipeline.audit import cli_actor
    from billing_pipeline.invoicing import voids
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    corrected: dict[str, Decimal] = {}
    for item in units:
        metric, _, value = item.partition("=")
        try:
            corrected[metric.strip()] = Decimal(value.strip())
        except InvalidOperation:
            typer.echo(f"error: --units {item!r}: expected METRIC=UNITS, e.g. api_calls=1200", err=True)
            raise typer.Exit(2) from None
    settings = load_settings()
    try:
        result = voids.void_invoice(
            get_engine(settings), number, reason=reason, actor=actor or cli_actor(), replace=replace,
            units=corrected, razorpay_client=_provider_clients(settings)["razorpay"],
        )
    except voids.VoidError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{number} void ({result.events_released} late events billable again)"
               + (f"; payment link {result.payment_link_cancelled} cancelled" if result.payment_link_cancelled else "")
               + (f"; replaced by {result.replacement_number}" if result.replacement_number else ""))


@invoice_app.command("export")
def export(
    month: str = typer.Option(..., "--month", help="YYYY-MM."),
    out: str = typer.Option("-", "--out", help="CSV file to write; '-' (default) for standard output."),
) -> None:
    """The month's invoices (finalized and void) and credit notes as CSV, with credited, refunded, paid and
    due amounts in minor units."""
    import sys

    from billing_pipeline.invoicing import exports, periods
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    try:
        period_start = periods.parse_month(month)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from None
    rows = exports.month_documents(get_engine(load_settings()), period_start)
    if out == "-":
        exports.write_csv(rows, sys.stdout)
    else:
        with open(out, "w", encoding="utf-8", newline="") as handle:
            exports.write_csv(rows, handle)
        typer.echo(f"{len(rows)} documents written to {out}")


@invoice_app.command("pdf")
def pdf(
    number: str = typer.Argument(..., help="The invoice or credit note number, e.g. INV-2026-000001."),
    out: Path = typer.Option(None, "-o", "--out", help="PDF file to write; default: NUMBER.pdf here."),
) -> None:
    """Write a finalized invoice's or a credit note's PDF (rendered once and kept with its sha256; rendered
    now if missing)."""
    from billing_pipeline.audit import cli_actor
    from billing_pipeline.documents import invoices as documents
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    engine = get_engine(load_settings())

    def find():
        with engine.connect() as conn:
            return documents.stored_pdf(conn, number) or documents.stored_pdf(conn, number, "credit_note")

    stored = find()
    if stored is None:
        try:
            documents.render_documents(engine, cli_actor(), number=number)
        except documents.NoSeller as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        stored = find()
    if stored is None:
        typer.echo(f"error: no finalized invoice or credit note {number}", err=True)
        raise typer.Exit(1)
    data, digest = stored
    target = out or Path(f"{number}.pdf")
    target.write_bytes(data)
    typer.echo(f"{target}\tsha256 {digest}")
