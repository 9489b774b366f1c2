"""`billing-pipeline`: the command line (db, catalog, demo, and the domain commands)."""

from __future__ import annotations

from billing_pipeline.telemetry import disable_telemetry, quiet_library_warnings

disable_telemetry()
quiet_library_warnings()

import sys  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from billing_pipeline.cli_options import ActorOption  # noqa: E402
from billing_pipeline.settings import Settings, SettingsError, load_settings  # noqa: E402
from billing_pipeline.utc import parse_month  # noqa: E402

app = typer.Typer(help="Usage-based billing pipeline on Dagster.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The warehouse schema (numbered SQL files in sql/).", no_args_is_help=True)
catalog_app = typer.Typer(help="Billable metrics, plans and organisations (a YAML file).", no_args_is_help=True)
demo_app = typer.Typer(help="The demo: a generated month of usage, run through every asset.", no_args_is_help=True)
from billing_pipeline.accounts.cli import accounts_app, health  # noqa: E402
from billing_pipeline.api.cli import keys_app, serve  # noqa: E402
from billing_pipeline.invoicing.cli import invoice_app  # noqa: E402
from billing_pipeline.operations.cli import backfill  # noqa: E402
from billing_pipeline.payments.cli import recon_app, webhooks_app  # noqa: E402
from billing_pipeline.wallet.cli import wallet_app  # noqa: E402

app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.command("health", help="Is the pipeline running; does anything need a person? (exit 1 if so)")(health)
app.add_typer(accounts_app, name="accounts")
app.add_typer(invoice_app, name="invoice")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(recon_app, name="recon")
app.add_typer(wallet_app, name="wallet")
app.command("serve", help="Run the HTTP API (usage events, webhooks, health) with uvicorn.")(serve)
app.add_typer(catalog_app, name="catalog")
app.command("backfill")(backfill)
app.add_typer(demo_app, name="demo")

console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _engine(settings: Settings):
    from billing_pipeline.warehouse import get_engine

    return get_engine(settings)


def _month(value: Optional[str]) -> Optional[date]:
    if value is None:
        return None
    try:
        return parse_month(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration (each once, in its own transaction)."""
    from billing_pipeline import migrations

    settings = _settings()
    try:
        applied = migrations.upgrade(_engine(settings))
    except migrations.MigrationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print("\n".join(f"applied {name}" for name in applied) or "up to date: nothing to apply")


@db_app.command("status")
def db_status() -> None:
    """List migrations: applied, pending, or changed since applied (exit 1 if any changed)."""
    from billing_pipeline import migrations

    rows = migrations.status(_engine(_settings()))
    table = Table("version", "file", "state", "applied at")
    for row in rows:
        table.add_row(row.version, row.name, row.state, f"{row.applied_at:%Y-%m-%d %H:%M:%S}" if row.applied_at else "")
    console.print(table)
    if any(r.state in ("changed", "missing-file") for r in rows):
        raise typer.Exit(1)


@db_app.command("url")
def db_url(
    show_password: Annotated[bool, typer.Option("--show-password", help="Print the password.")] = False,
) -> None:
    """The warehouse's connection string (embedded or BILLING_DATABASE_URL), for psql or pg_dump."""
    from billing_pipeline.db_tools import embedded_running, libpq_url

    settings = _settings()
    was_running = settings.uses_embedded_database and embedded_running(settings)
    print(libpq_url(settings, show_password=show_password))
    if settings.uses_embedded_database and not was_running:
        err.print(
            "[yellow]note: the embedded server runs only while a billing-pipeline process uses it"
            " (`billing-pipeline db shell`, `make ui`, `serve`); it stops again when this command"
            " exits.[/yellow]"
        )


@db_app.command(
    "shell", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def db_shell(ctx: typer.Context) -> None:
    """psql on the warehouse in use (extra arguments go to psql, e.g. `-c 'SELECT 1'`)."""
    from billing_pipeline.db_tools import run_psql

    raise typer.Exit(run_psql(_settings(), list(ctx.args)))


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server cleanly (pg_ctl stop, fast mode); its users' connections are closed."""
    from billing_pipeline.db_tools import stop_embedded_server

    settings = _settings()
    if not settings.uses_embedded_database:
        err.print("[red]BILLING_DATABASE_URL is set: that server is not ours to stop.[/red]")
        raise typer.Exit(2)
    users = stop_embedded_server(settings)
    if users is None:
        console.print(f"the embedded server in {settings.pg_data_dir} is not running", soft_wrap=True)
    else:
        who = f" (it was in use by pid {', '.join(map(str, users))})" if users else ""
        console.print(f"stopped the embedded server in {settings.pg_data_dir}{who}", soft_wrap=True)


@catalog_app.command("apply")
def catalog_apply(file: Annotated[Path, typer.Argument(help="The catalog YAML file.")], actor: ActorOption = None) -> None:
    """Validate the file and upsert it; the same file twice changes nothing."""
    from billing_pipeline import catalog
    from billing_pipeline.audit import cli_actor

    try:
        parsed = catalog.load_catalog(file)
    except catalog.CatalogError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    summary = catalog.apply_catalog(_engine(_settings()), parsed, source=str(file), applied_by=cli_actor(actor))
    console.print(", ".join(f"{k}: {v}" for k, v in summary.items()))


@catalog_app.command("validate")
def catalog_validate(file: Path) -> None:
    """Check the file without touching the warehouse; lists every problem."""
    from billing_pipeline import catalog

    try:
        parsed = catalog.load_catalog(file)
    except catalog.CatalogError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"{file}: valid ({len(parsed.billable_metrics)} metrics, {len(parsed.plans)} plans,"
        f" {len(parsed.organisations)} organisations)"
    )


@demo_app.command("generate")
def demo_generate(
    month: Annotated[Optional[str], typer.Option(help="YYYY-MM; default: last month")] = None,
    events: int = 200_000,
) -> None:
    """Write the demo catalog file and a month of usage into the edge store (deterministic)."""
    from billing_pipeline.demo import generate

    settings = _settings()
    first = _month(month) or generate.previous_month()
    path = generate.write_catalog(generate.demo_catalog(first), settings.home_dir / "demo-catalog.yaml")
    plan = generate.generate(first, events=events)
    new = generate.write_edge(settings.edge_path, plan)
    console.print(f"catalog: {path}\nedge store: {settings.edge_path}: {new} new of {len(plan.rows)} rows")


@demo_app.command("run")
def demo_run(
    month: Annotated[Optional[str], typer.Option(help="YYYY-MM; default: last month")] = None,
    events: int = 200_000,
) -> None:
    """Everything `make demo` does: warehouse, migrations, catalog, usage, every asset for the month."""
    import time

    from billing_pipeline.demo.run import Failed, run_demo

    settings = _settings()
    started = time.monotonic()
    with console.status("starting") as status:

        def step(text: str) -> None:
            if isinstance(text, Failed):
                console.print(f"[bold red]✗ {text}[/bold red]")
            elif text.startswith("run:"):
                console.print(f"[cyan]→[/cyan] {text}")
            else:
                console.print(f"[green]✓[/green] {text}")
            status.update(text)

        result = run_demo(settings, _month(month), events, step)
    runs = Table("run", "partitions", "assets", "result", title=f"Dagster runs for {result['month']:%Y-%m}")
    for run in result["runs"]:
        runs.add_row(run.label, run.partitions, ", ".join(run.assets), "[green]✓ ok[/green]" if run.success else "[bold red]✗ FAILED[/bold red]")
    console.print(runs)
    counts = Table("table", "rows", title="Warehouse")
    for name, count in result["counts"].items():
        counts.add_row(name, f"{count:,}")
    console.print(counts)
    console.print(
        f"Data: {settings.home_dir} (PostgreSQL in pg/, edge store {settings.edge_path.name},"
        f" Dagster in dagster/). Took {time.monotonic() - started:.0f} s.\n"
        "Open the UI with [bold]make ui[/bold] (http://127.0.0.1:3000): the runs above are in its history."
    )
    failed = [run.label for run in result["runs"] if not run.success]
    if failed:
        err.print(f"[bold red]✗ {len(failed)} run(s) FAILED: {', '.join(failed)}; the runs after it were not started[/bold red]")
        raise typer.Exit(1)


@app.command("ui")
def ui(
    port: int = 3000,
    workspace: Annotated[Optional[Path], typer.Option(help="Another workspace file (tests).")] = None,
) -> None:
    """`dagster dev -w workspace.yaml` on BILLING_HOME's Dagster instance (the demo's runs are there)."""
    import os
    import shutil
    import signal

    from billing_pipeline.dagster_home import ensure_dagster_home

    settings = _settings()
    ensure_dagster_home(settings)
    workspace = (workspace or Path(__file__).resolve().parent.parent / "workspace.yaml").resolve()
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    console.print(f"Dagster home: {settings.dagster_home}; UI on http://127.0.0.1:{port}")
    # dagster dev stops on SIGTERM by mapping it to SIGINT's handler, which a process started in the
    # background inherits as "ignored": give it both back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execv(dagster, [dagster, "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)])


def main() -> None:  # pragma: no cover - console script entry
    app(prog_name="billing-pipeline")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
