"""The embedded server stops when its last LIVE user leaves, however that user ended, and
`billing-pipeline db url | shell | stop` reach it without the project's internals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from billing_pipeline.fakes.server import free_port

CLI = str(Path(sys.executable).with_name("billing-pipeline"))
STOP_BOUND_SECONDS = 10

HOLDER = r"""
import pathlib, sys, time
import sqlalchemy as sa
from billing_pipeline.settings import load_settings
from billing_pipeline.warehouse import get_engine
with get_engine(load_settings()).connect() as conn:
    conn.execute(sa.text("SELECT 1"))
ready, go = pathlib.Path(sys.argv[1] + ".ready"), pathlib.Path(sys.argv[1] + ".go")
ready.touch()
while not go.exists():
    time.sleep(0.05)
"""


@pytest.fixture()
def home():
    path = Path(f"/tmp/bpl-{uuid.uuid4().hex[:8]}")
    path.mkdir()
    yield path
    from billing_pipeline.pg_reaper import stop_server

    if (path / "pg" / "postmaster.pid").exists():
        stop_server(path / "pg")
    shutil.rmtree(path, ignore_errors=True)


def env_for(home: Path) -> dict:
    return {k: v for k, v in os.environ.items() if k != "BILLING_DATABASE_URL"} | {"BILLING_HOME": str(home)}


def users(home: Path) -> list[int]:
    return json.loads((home / "pg" / ".handle_pids.json").read_text() or "[]")


def running(home: Path) -> bool:
    return (home / "pg" / "postmaster.pid").exists()


def holder(home: Path, name: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home / name)], env=env_for(home))
    deadline = time.time() + 60
    while not (home / f"{name}.ready").exists():
        assert proc.poll() is None and time.time() < deadline, f"{name} did not attach"
        time.sleep(0.05)
    return proc


def cli(home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", env_for(home))
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, **kwargs)


def wait_until(condition, seconds: float, message: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, message
        time.sleep(0.1)
    return time.monotonic() - started


def test_db_url_hides_the_password_unless_asked(monkeypatch):
    from billing_pipeline.cli import app

    password = "p@ss:w/rd%"
    url = sa.URL.create("postgresql", "billing", password, "db.internal", 5432, "billing").render_as_string(
        hide_password=False)
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    hidden = CliRunner().invoke(app, ["db", "url"])
    assert hidden.exit_code == 0, hidden.output
    assert "***" in hidden.output and "rd" not in hidden.output
    shown = CliRunner().invoke(app, ["db", "url", "--show-password"])
    assert shown.exit_code == 0
    assert sa.make_url(shown.output.strip()).password == password
    assert sa.make_url(shown.output.strip()).drivername == "postgresql"  # libpq form, for psql and pg_dump
    refused = CliRunner().invoke(app, ["db", "stop"])
    assert refused.exit_code == 2 and "not ours to stop" in refused.output


@pytest.mark.slow
def test_db_url_shell_and_stop_on_the_embedded_server(home):
    first = holder(home, "first")
    try:
        url = cli(home, "db", "url", check=True)
        assert sa.make_url(url.stdout.strip()).query["host"] == str(home / "pg")
        shell = cli(home, "db", "shell", input="SELECT 40 + 2 AS answer;\n")
        assert shell.returncode == 0, shell.stderr
        assert "answer" in shell.stdout and "42" in shell.stdout
        # No psql on PATH: the embedded server's own psql is used.
        no_psql = env_for(home) | {"PATH": str(Path(sys.executable).parent)}
        own = cli(home, "db", "shell", "-c", "SELECT current_setting('data_directory')", env=no_psql)
        assert own.returncode == 0, own.stderr
        assert str(home / "pg") in own.stdout
        assert running(home) and users(home) == [first.pid]
        stop = cli(home, "db", "stop")
        assert stop.returncode == 0, stop.stderr
        assert f"in use by pid {first.pid}" in stop.stdout
        assert not running(home)
        again = cli(home, "db", "stop")
        assert "not running" in again.stdout
    finally:
        (home / "first.go").touch()
        first.wait(timeout=30)


@pytest.mark.slow
def test_killed_users_are_dropped_and_the_last_live_one_stops_it(home):
    first, second = holder(home, "first"), holder(home, "second")
    assert sorted(users(home)) == sorted([first.pid, second.pid])
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_until(lambda: users(home) == [second.pid], 5, f"the killed user stayed listed: {users(home)}")
    assert running(home), "the server stopped while a live user had it"
    # A clean exit of the last live user stops the server at once.
    (home / "second.go").touch()
    assert second.wait(timeout=30) == 0
    wait_until(lambda: not running(home), STOP_BOUND_SECONDS, "the server outlived its last user")

    # SIGKILL of the only user: the watchdog stops the server.
    third = holder(home, "third")
    assert running(home) and users(home) == [third.pid]
    third.send_signal(signal.SIGKILL)
    third.wait()
    wait_until(lambda: not running(home), STOP_BOUND_SECONDS, "the server outlived its killed user")
    assert users(home) == []


@pytest.mark.slow
def test_sigterm_to_serve_stops_the_server(home):
    port = free_port()
    serve = subprocess.Popen([CLI, "serve", "--port", str(port)], env=env_for(home),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert serve.poll() is None, serve.stderr.read()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
                if response.status_code == 200 and running(home):
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "serve did not become healthy"
            time.sleep(0.5)
        assert users(home) == [serve.pid]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    wait_until(lambda: not running(home), STOP_BOUND_SECONDS, "the server outlived `serve` after SIGTERM")
