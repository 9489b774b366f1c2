"""`billing-pipeline wallet ...`: prepaid wallets for finance and on-call (balances, top-ups, refusals)."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
import typer

from billing_pipeline.cli_options import ActorOption

wallet_app = typer.Typer(
    help="Prepaid wallets: balances, top-ups, adjustments, refused charges.", no_args_is_help=True
)


def _engine():
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    return get_engine(load_settings())


def _minor(amount: str, currency: str) -> int:
    """Major units as typed ("12.50") to minor units; refuses anything finer than the currency's unit."""
    from billing_pipeline.money import from_minor, parse_decimal, to_minor

    try:
        value = parse_decimal(amount)
        minor = to_minor(value, currency)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="AMOUNT") from None
    if from_minor(minor, currency) != value:
        raise typer.BadParameter(f"{amount} has more decimals than {currency} allows", param_hint="AMOUNT")
    return minor


def _post(action: str, org: str, amount: str, reference: str, reason: str | None, actor: str | None) -> None:
    from billing_pipeline.audit import cli_actor
    from billing_pipeline.money import from_minor
    from billing_pipeline.wallet import ledger

    with _engine().begin() as conn:
        try:
            currency = ledger.status(conn, org).currency
            minor = _minor(amount, currency)
            if action == "top_up":
                result = ledger.top_up(conn, org, minor, currency, reference, actor=cli_actor(actor))
            else:
                result = ledger.adjust(
                    conn, org, minor, currency, reference, actor=cli_actor(actor), reason=reason or ""
                )
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    balance = f"{from_minor(result.balance_minor, currency)} {currency}"
    typer.echo(
        f"{result.outcome}{f' ({result.reason})' if result.reason else ''}: {org} balance {balance}"
        f"{', needs recharge' if result.needs_recharge else ''}"
    )
    if result.refused:
        raise typer.Exit(1)


@wallet_app.command("show")
def show(
    org: str = typer.Argument(..., help="Organisation id."),
    entries: int = typer.Option(10, help="Latest entries to list."),
) -> None:
    """The wallet's balance, debt limit, recharge state and latest entries."""
    from billing_pipeline.money import from_minor
    from billing_pipeline.wallet import ledger

    with _engine().connect() as conn:
        try:
            s = ledger.status(conn, org)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        rows = conn.execute(
            sa.text(
                "SELECT created_at, kind, reference, amount_minor FROM billing.wallet_entries"
                " WHERE organisation_id = :org ORDER BY entry_id DESC LIMIT :n"
            ),
            {"org": org, "n": entries},
        ).all()

    def money(minor: int) -> str:
        return f"{from_minor(minor, s.currency)} {s.currency}"

    typer.echo(
        f"{org}: balance {money(s.balance_minor)}, debt limit {money(s.debt_limit_minor)}, available "
        f"{money(s.available_minor)}, recharge under {money(s.recharge_threshold_minor)}"
        f"{' (NEEDS RECHARGE)' if s.needs_recharge else ''}"
    )
    for r in rows:
        typer.echo(
            f"  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.kind:<12} {money(r.amount_minor):>16}  {r.reference}"
        )


@wallet_app.command("top-up")
def top_up(
    org: str = typer.Argument(..., help="Organisation id."),
    amount: str = typer.Argument(..., help="In the wallet's currency, major units: 25.00"),
    reference: str = typer.Option(
        ..., "--reference", help="The payment's id; a second top-up with it does nothing."
    ),
    actor: ActorOption = None,
) -> None:
    """Credit a paid top-up to the wallet (idempotent per reference)."""
    _post("top_up", org, amount, reference, None, actor)


@wallet_app.command("adjust")
def adjust(
    org: str = typer.Argument(..., help="Organisation id."),
    amount: str = typer.Argument(
        ..., help="Signed, major units: 5.00 credits, -5.00 debits (within the debt limit)."
    ),
    reason: str = typer.Option(..., "--reason", help="Why, for the audit log."),
    reference: str = typer.Option(
        ..., "--reference", help="A key for this adjustment; reusing it does nothing."
    ),
    actor: ActorOption = None,
) -> None:
    """A manual correction, audited with its reason."""
    _post("adjust", org, amount, reference, reason, actor)


@wallet_app.command("refusals")
def refusals(
    org: str = typer.Option(None, "--org", help="Only this organisation."),
    since: str = typer.Option(None, "--since", help="YYYY-MM-DD (UTC); default: all."),
) -> None:
    """Debits the wallets refused (debt limit or currency), newest first: usage to chase."""
    try:
        since_day = date.fromisoformat(since) if since else None
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint="--since") from None
    with _engine().connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT refused_at, organisation_id, kind, reference, amount_minor, currency, reason, detail"
                " FROM billing.wallet_refusals"
                " WHERE (CAST(:org AS text) IS NULL OR organisation_id = :org)"
                " AND (CAST(:since AS date) IS NULL OR refused_at >= CAST(:since AS date))"
                " ORDER BY refused_at DESC"
            ),
            {"org": org, "since": since_day},
        ).all()
    for r in rows:
        typer.echo(
            f"{r.refused_at:%Y-%m-%d %H:%M:%S}  {r.organisation_id}  {r.kind} {r.reference}  "
            f"{r.reason}: {r.detail}"
        )
    typer.echo(f"{len(rows)} refusal(s)")
