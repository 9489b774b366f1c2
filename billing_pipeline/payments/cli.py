"""`billing-pipeline webhooks ...` (dead letters, replay) and `billing-pipeline recon export`.

Mounted by the main CLI as two groups: `app.add_typer(webhooks_app, name="webhooks")` and
`app.add_typer(recon_app, name="recon")`.
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer

from billing_pipeline import findings
from billing_pipeline.audit import cli_actor
from billing_pipeline.cli_options import ActorOption
from billing_pipeline.money import from_minor, is_valid_currency
from billing_pipeline.payments import inbox
from billing_pipeline.settings import load_settings
from billing_pipeline.warehouse import get_engine

webhooks_app = typer.Typer(help="Provider webhooks: dead letters and their replay.", no_args_is_help=True)
recon_app = typer.Typer(no_args_is_help=True)


@recon_app.callback()
def recon() -> None:
    """Reconciliation findings: per-day observations (recon.discrepancies) and the findings workflow."""


def _engine():
    return get_engine(load_settings())


@webhooks_app.command("dead")
def dead(provider: Annotated[str | None, typer.Option(help="only this provider")] = None) -> None:
    """List the dead letters waiting for a replay."""
    with _engine().connect() as conn:
        letters = inbox.waiting_dead_letters(conn, provider)
    for d in letters:
        typer.echo(
            f"{d['dead_letter_id']}\t{d['provider']}\t{d['event_id']}\t{d['event_type']}\t"
            f"{d['attempts']} attempts\tdied {d['died_at']:%Y-%m-%d %H:%M:%S}\t{d['last_error']}"
        )
    typer.echo(f"{len(letters)} dead letter(s) waiting")


@webhooks_app.command("replay")
def replay(
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="dead letter id (repeatable); default: all")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="only this provider")] = None,
    actor: ActorOption = None,
) -> None:
    """Put dead letters back in the inbox queue with fresh attempts (audited); processing picks them up."""
    replayed = inbox.replay_dead_letters(
        _engine(), actor=cli_actor(actor), dead_letter_ids=ids or None, provider=provider
    )
    for r in replayed:
        typer.echo(f"replayed {r['dead_letter_id']}\t{r['provider']}\t{r['event_id']}")
    typer.echo(f"{len(replayed)} dead letter(s) replayed")
    if ids and len(replayed) < len(set(ids)):
        missing = sorted(set(ids) - {r["dead_letter_id"] for r in replayed})
        typer.echo(f"not waiting (unknown or already replayed): {', '.join(map(str, missing))}", err=True)
        raise typer.Exit(1)


EXPORT_COLUMNS = (
    "recon_date",
    "source",
    "kind",
    "provider",
    "organisation_id",
    "reference",
    "currency",
    "internal_amount_minor",
    "provider_amount_minor",
    "internal_amount",
    "provider_amount",
    "detail",
    "detected_at",
)
_FINDINGS = sa.text("""
    SELECT recon_date, source, kind, provider, organisation_id, reference, currency, internal_amount_minor,
           provider_amount_minor, detail, detected_at
    FROM recon.discrepancies WHERE recon_date = :day
    ORDER BY source, kind, provider, reference, discrepancy_id
""")


def _major(minor: int | None, currency: str | None) -> str:
    return "" if minor is None or not is_valid_currency(currency) else str(from_minor(minor, currency))


@recon_app.command("export")
def export(
    day: Annotated[datetime, typer.Option("--date", formats=["%Y-%m-%d"], help="the recon day, YYYY-MM-DD")],
    out: Annotated[
        Path | None, typer.Option("--out", help="CSV file to write; default: standard output")
    ] = None,
) -> None:
    """Write the day's findings of every reconciliation (all sources) as CSV, amounts minor and major."""
    with _engine().connect() as conn:
        rows = conn.execute(_FINDINGS, {"day": day.date()}).mappings().all()
    handle = out.open("w", newline="", encoding="utf-8") if out else sys.stdout
    try:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            currency = r["currency"]
            writer.writerow(
                {
                    **r,
                    "internal_amount": _major(r["internal_amount_minor"], currency),
                    "provider_amount": _major(r["provider_amount_minor"], currency),
                    "detected_at": r["detected_at"].isoformat(),
                }
            )
    finally:
        if out:
            handle.close()
    if out:
        typer.echo(f"{len(rows)} finding(s) for {day:%Y-%m-%d} written to {out}", err=True)


def _days_option(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip().lower().removesuffix("d")
    if not value.isdigit():
        raise typer.BadParameter(f"{text!r}: give days, e.g. 7d")
    return int(value)


@recon_app.command("list")
def list_findings(
    only_open: Annotated[bool, typer.Option("--open", help="only open or acknowledged findings")] = False,
    kind: Annotated[str | None, typer.Option(help="only this kind, e.g. unapplied_payment")] = None,
    provider: Annotated[str | None, typer.Option(help="only this provider")] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="only findings older than this many days, e.g. 7d")
    ] = None,
) -> None:
    """Findings (recon.findings), oldest first, with their age in days and the amount at stake."""
    days = _days_option(older_than)
    with _engine().connect() as conn:
        rows = findings.list_findings(conn, only_open=only_open, kind=kind, provider=provider, older_than_days=days)
    for r in rows:
        typer.echo(
            f"{r['finding_id']}\t{r['status']}\t{r['source']}\t{r['kind']}\t{r['provider'] or ''}\t"
            f"{r['organisation_id'] or ''}\t{r['reference'] or ''}\t{r['first_seen']}..{r['last_seen']}\t"
            f"{r['age_days']}d\t{findings.major(r['amount_minor'], r['currency'])} {r['currency'] or ''}\t"
            f"{r['detail']}"
        )
    typer.echo(f"{len(rows)} finding(s)")


def _move(finding_id: int, to_state: str, note: str | None, actor: str | None) -> None:
    try:
        with _engine().begin() as conn:
            findings.set_status(conn, finding_id, to_state, note=note, actor=actor or cli_actor())
    except findings.FindingError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"finding {finding_id}: {to_state}")


@recon_app.command("ack")
def ack(
    finding_id: Annotated[int, typer.Argument(help="the finding id (recon list)")],
    note: Annotated[str | None, typer.Option(help="why, for the audit log")] = None,
    actor: Annotated[str | None, typer.Option(help="who (default cli:<user>)")] = None,
) -> None:
    """Acknowledge an open finding (audited)."""
    _move(finding_id, "acknowledged", note, actor)


@recon_app.command("resolve")
def resolve(
    finding_id: Annotated[int, typer.Argument(help="the finding id (recon list)")],
    note: Annotated[str, typer.Option(help="what was done (required; in the audit log)")],
    wont_fix: Annotated[bool, typer.Option("--wont-fix", help="close it as wont_fix instead")] = False,
    actor: Annotated[str | None, typer.Option(help="who (default cli:<user>)")] = None,
) -> None:
    """Resolve an open or acknowledged finding with a note (audited); it reopens if the data shows it again."""
    _move(finding_id, "wont_fix" if wont_fix else "resolved", note, actor)
