"""`billing-pipeline keys ...` (ingest API keys) and `billing-pipeline serve` (the HTTP API)."""

from __future__ import annotations

from contextlib import closing
from typing import Annotated

import typer

from billing_pipeline.api import keys
from billing_pipeline.api.config import load_api_config
from billing_pipeline.cli_options import ActorOption
from billing_pipeline.settings import load_settings

keys_app = typer.Typer(help="Ingest API keys (stored hashed in the edge store).", no_args_is_help=True)


def _connect():
    return closing(keys.connect(load_settings().edge_path))


def _audit(key_id: str, action: str, actor: str | None, **detail) -> None:
    """Keys live in the edge store; who changed one goes to the warehouse's audit log, after the change."""
    from billing_pipeline.audit import AuditEntry, cli_actor, record
    from billing_pipeline.warehouse import get_engine

    with get_engine(load_settings()).begin() as conn:
        record(conn, [AuditEntry("api_key", key_id, action, actor=cli_actor(actor), detail=detail)])


def _show_once(issued: keys.IssuedKey) -> None:
    typer.echo(f"key id:  {issued.key.key_id}")
    typer.echo(f"project: {issued.key.organisation_id} / {issued.key.project_id}")
    typer.echo(f"API key: {issued.token}")
    typer.echo("Store the API key now: it is not kept and cannot be shown again.")


@keys_app.command()
def create(
    org: Annotated[str, typer.Option("--org", help="organisation id")],
    project: Annotated[str, typer.Option("--project", help="project id")],
    name: Annotated[str | None, typer.Option("--name", help="a label for the key")] = None,
    actor: ActorOption = None,
) -> None:
    """Create a key for a project and print it (once)."""
    with _connect() as conn:
        issued = keys.create_key(conn, org, project, name)
    _audit(issued.key.key_id, "created", actor, organisation_id=org, project_id=project, name=name)
    _show_once(issued)


@keys_app.command()
def revoke(key_id: str, actor: ActorOption = None) -> None:
    """Revoke a key at once (also during a rotation's grace window)."""
    with _connect() as conn:
        try:
            changed = keys.revoke_key(conn, key_id)
        except KeyError:
            typer.echo(f"no key {key_id}", err=True)
            raise typer.Exit(1)
    if changed:
        _audit(key_id, "revoked", actor)
    typer.echo(f"revoked {key_id}" if changed else f"{key_id} was already revoked")


@keys_app.command()
def rotate(
    key_id: str,
    grace_seconds: Annotated[
        int | None,
        typer.Option("--grace-seconds", min=0, help="how long the old key stays valid"
                     " [default: BILLING_API_KEY_GRACE_SECONDS, 86400]"),
    ] = None,
    actor: ActorOption = None,
) -> None:
    """Create a new key for the same project; the old one expires after the grace window."""
    grace = load_api_config().key_grace_seconds if grace_seconds is None else grace_seconds
    with _connect() as conn:
        try:
            issued = keys.rotate_key(conn, key_id, grace)
        except KeyError:
            typer.echo(f"no key {key_id}", err=True)
            raise typer.Exit(1)
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1)
    _audit(key_id, "rotated", actor, new_key_id=issued.key.key_id, grace_seconds=grace)
    typer.echo(f"{key_id} stays valid for {grace} s more")
    _show_once(issued)


@keys_app.command("list")
def list_() -> None:
    """Every key with its state (never the key itself)."""
    now = keys.utc_now()
    with _connect() as conn:
        rows = keys.list_keys(conn)
    typer.echo(f"{'key id':<16}  {'organisation':<16}  {'project':<16}  {'state':<8}  {'created':<27}"
               "  expires / name")
    for key in rows:
        typer.echo(
            f"{key.key_id:<16}  {key.organisation_id:<16}  {key.project_id:<16}  {key.state(now):<8}"
            f"  {key.created_at:<27}  {key.expires_at or '-'}  {key.name or ''}"
        )


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the HTTP API (usage events, health) with uvicorn, one process.

    One process because the rate limiter's buckets are in memory; run several behind a proxy only
    with a shared limiter.
    """
    import uvicorn

    from billing_pipeline.api.app import create_app

    uvicorn.run(create_app(), host=host, port=port)
