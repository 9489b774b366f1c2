"""Dagster's own home for `make demo`, `make ui` and the tests: BILLING_HOME/dagster.

Its runs, event logs and schedules live in PostgreSQL through dagster-postgres, in a database named
`dagster` on the warehouse's server (created when missing):
- embedded warehouse: the embedded server, reached on its unix socket
  (`postgresql+psycopg2://postgres@/dagster?host=<socket dir>`, trust authentication). The socket
  folder can change from one start to the next, so the instance file is rewritten by every call.
- BILLING_DATABASE_URL set: the instance file names `PostgresStorageFromEnvironment`
  (billing_pipeline/dagster_instance.py); DAGSTER_PG_URL or DAGSTER_PG_* are used when set, else
  DAGSTER_PG_URL is set in this process's environment (inherited by `dagster dev`'s processes) to
  the `dagster` database of the warehouse's server with the warehouse's credentials.
Production uses deploy/dagster.yaml instead (see the README), never loaded implicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from billing_pipeline.settings import Settings

DATABASE = "dagster"

# Run monitoring: a run whose worker process is gone is failed by the daemon within
# poll_interval_seconds (plus one daemon tick); runs are not resumed.
COMMON_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
run_launcher:
  module: billing_pipeline.dagster_instance
  class: MonitoredRunLauncher
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 5
telemetry:
  enabled: false
"""

EMBEDDED_STORAGE = """\
storage:
  postgres:
    postgres_url: "{url}"
"""

ENVIRONMENT_STORAGE = """\
storage:
  custom:
    module: billing_pipeline.dagster_instance
    class: PostgresStorageFromEnvironment
"""

_derived_url: str | None = None  # the DAGSTER_PG_URL this process derived (recomputed, not kept)

HEADER = "# Written by billing_pipeline.dagster_home on every start (do not edit): {what}\n"


def ensure_dagster_home(settings: Settings) -> Path:
    """Create BILLING_HOME/dagster, its `dagster` database and its dagster.yaml; point DAGSTER_HOME at it."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    if settings.uses_embedded_database:
        url = embedded_dagster_url(settings)
        _create_database(url)
        text = HEADER.format(what="the embedded server's `dagster` database")
        text += EMBEDDED_STORAGE.format(url=url)
    else:
        global _derived_url
        given = os.environ.get("DAGSTER_PG_URL")
        if (given is None or given == _derived_url) and not os.environ.get("DAGSTER_PG_HOST"):
            from billing_pipeline.warehouse import database_url

            _derived_url = warehouse_server_dagster_url(settings)
            _create_database(_derived_url, admin_database=database_url(settings).database)
            os.environ["DAGSTER_PG_URL"] = _derived_url
        text = HEADER.format(what="storage from DAGSTER_PG_URL / DAGSTER_PG_*") + ENVIRONMENT_STORAGE
    text += COMMON_YAML
    config = home / "dagster.yaml"
    if not config.exists() or config.read_text(encoding="utf-8") != text:
        tmp = config.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def embedded_dagster_url(settings: Settings) -> str:
    """The embedded server's `dagster` database for dagster-postgres (starts or attaches to the server)."""
    from billing_pipeline.warehouse import embedded_url

    url = make_url(embedded_url(settings)).set(drivername="postgresql+psycopg2", database=DATABASE)
    return url.render_as_string(hide_password=False)


def warehouse_server_dagster_url(settings: Settings) -> str:
    """The `dagster` database on the server of BILLING_DATABASE_URL (same credentials and sslmode)."""
    from billing_pipeline.warehouse import database_url

    url = database_url(settings).set(drivername="postgresql+psycopg2", database=DATABASE)
    if "sslmode" not in url.query:
        url = url.update_query_dict({"sslmode": "prefer"})
    return url.render_as_string(hide_password=False)


def _create_database(url: str, admin_database: str | None = "postgres") -> None:
    """CREATE DATABASE dagster unless it exists, connected to `admin_database` (the warehouse's own
    database when BILLING_DATABASE_URL is set: a role may be allowed no other)."""
    admin_url = make_url(url).set(drivername="postgresql+psycopg", database=admin_database or "postgres")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    exists = sa.text("SELECT 1 FROM pg_database WHERE datname = :n").bindparams(n=DATABASE)
    try:
        with admin.connect() as conn:
            if conn.execute(exists).first() is None:
                try:
                    conn.exec_driver_sql(f'CREATE DATABASE "{DATABASE}"')
                except (sa.exc.ProgrammingError, sa.exc.IntegrityError):  # a concurrent process made it
                    if conn.execute(exists).first() is None:
                        raise
    finally:
        admin.dispose()
