"""Dagster instance parts named by the instance files (deploy/dagster.yaml and BILLING_HOME/dagster).

- `PostgresStorageFromEnvironment`: dagster-postgres storage (runs, event logs, schedules) whose
  connection comes from the environment: `DAGSTER_PG_URL`, or the parts `DAGSTER_PG_HOST`,
  `DAGSTER_PG_PORT`, `DAGSTER_PG_USER`, `DAGSTER_PG_PASSWORD`, `DAGSTER_PG_DB`; `DAGSTER_PG_SSLMODE`
  (default `require`) unless the URL names its own `sslmode`.
- `MonitoredRunLauncher`: Dagster's default launcher (runs in a subprocess of the code server) that
  also answers run monitoring's health check: a run whose worker process no longer exists is
  reported FAILED, so the monitoring daemon fails it even when the code server that started it is
  gone too.

The driver is always psycopg2 (`postgresql+psycopg2://`): with SQLAlchemy 2.1 a bare `postgresql://`
selects psycopg 3, under which dagster-postgres's `NOTIFY run_events, %(notify_id)s` is a syntax error.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import psutil
from dagster import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from sqlalchemy.engine import URL, make_url

DRIVER = "postgresql+psycopg2"
HOST_TAG = "billing/worker_host"


class DagsterStorageConfigError(RuntimeError):
    pass


def dagster_pg_url(environ: Mapping[str, str] | None = None) -> str:
    """The psycopg2 URL of Dagster's database from the environment (password included)."""
    env = os.environ if environ is None else environ
    if env.get("DAGSTER_PG_URL"):
        url = make_url(env["DAGSTER_PG_URL"])
    else:
        missing = [n for n in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_DB") if not env.get(n)]
        if missing:
            raise DagsterStorageConfigError(
                "Dagster's storage needs DAGSTER_PG_URL, or DAGSTER_PG_HOST, DAGSTER_PG_USER and"
                f" DAGSTER_PG_DB (missing: {', '.join(missing)})"
            )
        url = URL.create(
            DRIVER,
            username=env["DAGSTER_PG_USER"],
            password=env.get("DAGSTER_PG_PASSWORD") or None,
            host=env["DAGSTER_PG_HOST"],
            port=int(env.get("DAGSTER_PG_PORT") or 5432),
            database=env["DAGSTER_PG_DB"],
        )
    if url.get_backend_name() != "postgresql":
        raise DagsterStorageConfigError(f"DAGSTER_PG_URL is not a PostgreSQL URL: {url!r}")
    url = url.set(drivername=DRIVER)
    if "sslmode" not in url.query or env.get("DAGSTER_PG_SSLMODE"):
        url = url.update_query_dict({"sslmode": env.get("DAGSTER_PG_SSLMODE") or "require"})
    return url.render_as_string(hide_password=False)


class PostgresStorageFromEnvironment(DagsterPostgresStorage):
    """dagster-postgres storage, connection from the environment (see the module's docstring)."""

    @classmethod
    def config_type(cls):
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value):
        return cls(postgres_url=dagster_pg_url(), inst_data=inst_data)


class MonitoredRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher + a worker health check from the pid the worker logs when it starts."""

    def launch_run(self, context) -> None:
        self._instance.add_run_tags(context.dagster_run.run_id, {HOST_TAG: socket.gethostname()})
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        if run.tags.get(HOST_TAG) not in (None, socket.gethostname()):
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run worker is on another host")
        pid = worker_pid(self._instance, run.run_id)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run worker has not reported its pid")
        if _alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run worker process (pid {pid}) is gone")


def worker_pid(instance, run_id: str) -> int | None:
    """The pid from the run worker's "Started process for run" engine event (latest if several)."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    pid = None
    for record in records:
        entry = record.event_log_entry
        message = entry.dagster_event.message if entry.dagster_event else None
        if not (message or entry.user_message or "").startswith("Started process for run"):
            continue
        metadata = entry.dagster_event.event_specific_data.metadata
        if "pid" in metadata:
            pid = int(metadata["pid"].value)
    return pid


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
