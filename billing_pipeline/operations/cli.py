"""`billing-pipeline backfill`: a range of partitions as a Dagster backfill on BILLING_HOME's instance."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from billing_pipeline.cli_options import ActorOption

console = Console()
err = Console(stderr=True)


def backfill(
    group: Annotated[list[str], typer.Option("--group", help="Every asset of this group (repeatable).")] = [],  # noqa: B006
    asset: Annotated[list[str], typer.Option("--asset", help="This asset (repeatable).")] = [],  # noqa: B006
    start: Annotated[Optional[str], typer.Option("--from", help="First day (2026-10-01) or instant, included.")] = None,
    end: Annotated[Optional[str], typer.Option("--to", help="Last day, included (2026-10-07), or an instant, excluded.")] = None,
    rerun_failed: Annotated[Optional[str], typer.Option("--rerun-failed", metavar="BACKFILL_ID",
                                                        help="Run again what this backfill did not materialize.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow it to the end (starting a daemon if none runs).")] = True,
    actor: ActorOption = None,
) -> None:
    """Backfill assets over a range, as the UI's backfills: each asset gets the partitions (hourly,
    daily, monthly) whose whole window lies in the range; exit 1 naming any failed run."""
    import dagster as dg

    from billing_pipeline.audit import AuditEntry, cli_actor, record
    from billing_pipeline.dagster_home import ensure_dagster_home
    from billing_pipeline.operations import backfill as ops
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    settings = load_settings()
    ensure_dagster_home(settings)
    who = cli_actor(actor)
    try:
        if rerun_failed:
            if group or asset or start or end:
                raise ops.BackfillError("--rerun-failed takes no selection or range: it reruns that backfill's")
            backfill_id = ops.rerun_failed(rerun_failed)
            detail: dict = {"rerun_of": rerun_failed}
        else:
            if not (start and end):
                raise ops.BackfillError("give the range with --from and --to")
            ranges, skipped = ops.select(group, asset, ops.parse_bound(start, end=False), ops.parse_bound(end, end=True))
            table = Table("asset", "first partition", "last partition", "partitions")
            for r in ranges:
                table.add_row(r.key.to_user_string(), r.first, r.last, str(r.count))
            console.print(table)
            for reason in skipped:
                console.print(f"[yellow]skipped[/yellow] {reason}")
            backfill_id = ops.launch(ranges, {"billing/actor": who}, title=f"{start} .. {end} ({who})")
            detail = {"from": start, "to": end, "assets": {r.key.to_user_string(): [r.first, r.last] for r in ranges}}
    except ops.BackfillError as exc:
        err.print(f"[bold red]✗ {exc}[/bold red]")
        raise typer.Exit(2) from None
    with get_engine(settings).begin() as conn:
        record(conn, [AuditEntry("backfill", backfill_id, "relaunched" if rerun_failed else "launched",
                                 actor=who, detail=detail)])
    console.print(f"→ backfill [bold]{backfill_id}[/bold] launched on {settings.dagster_home} (see it under Backfills in the UI)")
    if not wait:
        return

    with console.status("waiting for the backfill daemon") as status:

        def progress(outcome: ops.Outcome) -> None:
            done = sum(r.is_finished for r in outcome.runs)
            status.update(f"backfill {outcome.backfill_id}: {outcome.status.lower()}, {done} of"
                          f" {len(outcome.runs)} run(s) finished, {len(outcome.failed_runs)} failed")

        outcome = ops.wait(dg.DagsterInstance.get(), backfill_id, progress)
    if outcome.ok:
        console.print(f"[green]✓[/green] backfill {backfill_id} completed: {len(outcome.runs)} run(s) succeeded")
        return
    for run in outcome.failed_runs:
        span = " .. ".join(filter(None, (run.tags.get("dagster/asset_partition_range_start"),
                                         run.tags.get("dagster/asset_partition_range_end"))))
        err.print(f"[bold red]✗ run {run.run_id} {run.status.value}[/bold red] {span or run.tags.get('dagster/partition', '')}")
    err.print(f"[bold red]✗ backfill {backfill_id} {outcome.status}[/bold red]; rerun what failed with:"
              f" billing-pipeline backfill --rerun-failed {backfill_id}")
    raise typer.Exit(1)
