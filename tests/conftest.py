"""Test fixtures: a real embedded PostgreSQL per test session, a fresh database per test.

The server is started once per pytest process (per xdist worker) in a temporary BILLING_HOME; the
migrations are applied once to a template database, and each test that asks for `db` gets its own
database cloned from it (CREATE DATABASE ... TEMPLATE: a file copy, ~0.1 s), with
BILLING_DATABASE_URL pointing at it, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from hypothesis import settings as hypothesis_settings

from billing_pipeline.telemetry import disable_telemetry

disable_telemetry()
# Property tests are judged on their examples, not their speed: the 2-core machine is shared and
# runs two test workers, so Hypothesis's default 200 ms deadline per example would be noise.
hypothesis_settings.register_profile("billing", deadline=None)
hypothesis_settings.load_profile("billing")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "billing_template"


@pytest.fixture(scope="session")
def pg_home(tmp_path_factory) -> Path:
    # Short path: PostgreSQL's socket lives in the data folder and socket paths are limited to ~100 bytes.
    home = Path(f"/tmp/bpt-{uuid.uuid4().hex[:8]}")
    home.mkdir()
    return home


PG15_BIN = Path("/usr/lib/postgresql/15/bin")
# URL-special characters on purpose: every place that builds or parses a URL must escape them.
PG15_PASSWORD = "p@ss:w/rd%#?&=x"


@contextmanager
def throwaway_pg15(home: Path) -> Iterator[str]:
    """A real PostgreSQL 15 cluster made with initdb in `home`: no service, a free loopback port,
    scram password authentication; stopped and removed afterwards. Root may not run PostgreSQL, so
    the cluster belongs to the embedded server's system user."""
    from billing_pipeline.fakes.server import free_port
    from billing_pipeline.warehouse import _ensure_server_user

    if not (PG15_BIN / "initdb").exists():
        raise RuntimeError(
            f"the second test pass needs PostgreSQL 15's binaries in {PG15_BIN}, which are missing:"
            " install them with `apt-get install -y postgresql-15` (make test does when it can)"
        )
    _ensure_server_user()
    user = "pgserver" if os.geteuid() == 0 else None
    data = home / "pg15"
    (home / "pwfile").write_text(PG15_PASSWORD)
    if user:
        shutil.chown(home, user)
        shutil.chown(home / "pwfile", user)
    run = partial(subprocess.run, check=True, capture_output=True, text=True, user=user)
    run([str(PG15_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
         f"--pwfile={home / 'pwfile'}", "-E", "UTF8", "--no-sync"])
    port = free_port()
    run([str(PG15_BIN / "pg_ctl"), "-D", str(data), "-l", str(home / "pg15.log"), "-w", "start", "-o",
         f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"])
    try:
        yield URL.create("postgresql+psycopg", "postgres", PG15_PASSWORD, "127.0.0.1", port, "postgres") \
            .render_as_string(hide_password=False)
    finally:
        run([str(PG15_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], check=False)


@pytest.fixture(scope="session")
def pg_server_url(pg_home) -> str:
    """URL of the session's server (database `postgres`), with the template migrated: the embedded
    PostgreSQL 18, or with BILLING_TEST_SERVER=pg15 a throwaway system PostgreSQL 15 (make test's
    second pass)."""
    from billing_pipeline import migrations
    from billing_pipeline.settings import Settings
    from billing_pipeline.warehouse import dispose_engines, embedded_url, stop_embedded

    settings = Settings(BILLING_HOME=str(pg_home))
    with ExitStack() as stack:
        if os.environ.get("BILLING_TEST_SERVER") == "pg15":
            url = stack.enter_context(throwaway_pg15(pg_home))
        else:
            url = embedded_url(settings)
            stack.callback(stop_embedded, settings)
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
            conn.exec_driver_sql(f"CREATE DATABASE {TEMPLATE_DB}")
        template = sa.create_engine(make_url(url).set(database=TEMPLATE_DB), poolclass=sa.NullPool)
        migrations.upgrade(template)
        template.dispose()
        admin.dispose()
        yield url
        dispose_engines()
    shutil.rmtree(pg_home, ignore_errors=True)


@pytest.fixture()
def db_url(pg_server_url, monkeypatch, tmp_path) -> str:
    """A fresh migrated database for this test; BILLING_* env points at it and a temp edge store."""
    from billing_pipeline.warehouse import dispose_engines

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    monkeypatch.setenv("BILLING_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BILLING_EDGE_PATH", str(tmp_path / "edge.sqlite3"))
    yield url
    dispose_engines()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture()
def engine(db_url) -> sa.Engine:
    """The engine the product itself uses for this test's database."""
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    return get_engine(load_settings())


@pytest.fixture()
def settings(db_url):
    from billing_pipeline.settings import load_settings

    return load_settings()
