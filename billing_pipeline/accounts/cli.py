"""`billing-pipeline health` and `billing-pipeline accounts ...`: commands for on-call and finance.

Mount: `app.command("health")(health)` and `app.add_typer(accounts_app, name="accounts")`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import typer

from billing_pipeline.audit import cli_actor
from billing_pipeline.cli_options import ActorOption

from billing_pipeline.settings import SettingsError

accounts_app = typer.Typer(no_args_is_help=True)

_MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def _load():
    from billing_pipeline.accounts.settings import load_accounts_settings
    from billing_pipeline.settings import load_settings

    try:
        return load_settings(), load_accounts_settings()
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def health(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Warehouse, edge store, migrations, each schedule's last success, dead letters, accounts and
    reconciliation. Exits 1 when something needs a person, 2 when the settings are invalid."""
    from billing_pipeline import health as checks
    from billing_pipeline.defs.operations.schedules import OVERDUE_AFTER

    settings, accounts = _load()
    report = checks.run_health(
        settings,
        checks.dagster_instance(settings),
        overdue_after=OVERDUE_AFTER,
        now=datetime.now(timezone.utc),
        recon_max_findings=accounts.recon_alert_max_findings,
        recon_max_amount_minor=accounts.recon_alert_max_amount_minor,
    )
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2, default=str))
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            typer.echo(f"{_MARKS[c.status]}  {c.name:<{width}}  {c.summary}")
            for line in c.details:
                typer.echo(f"      {'':<{width}}  - {line}")
        typer.echo("needs a person: yes" if report.needs_person else "needs a person: no")
    if report.needs_person:
        raise typer.Exit(1)


@accounts_app.callback()
def accounts() -> None:
    """Trials, grace periods, dunning and customer notifications."""


@accounts_app.command("retry-notifications")
def retry_notifications(
    notification_id: list[int] = typer.Option(None, "--id", help="Only these notifications (repeatable)."),
    actor: ActorOption = None,
) -> None:
    """Make dead notifications due again (after fixing the sender); the next accounts run sends them."""
    from billing_pipeline.accounts.outbox import requeue_dead
    from billing_pipeline.warehouse import get_engine

    settings, _ = _load()
    count = requeue_dead(
        get_engine(settings), now=datetime.now(timezone.utc), notification_ids=notification_id or None,
        actor=cli_actor(actor),
    )
    typer.echo(f"{count} dead notification(s) requeued")
