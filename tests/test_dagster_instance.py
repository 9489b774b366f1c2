"""BILLING_HOME's Dagster instance on dagster-postgres, run through `billing-pipeline ui` (dagster dev):
the webserver's GraphQL launches runs, the daemon dequeues them, the runs and their events are rows
of the embedded server's `dagster` database, a killed run worker ends FAILED within the bound, and
the embedded server stops once `dagster dev` and the run workers are gone."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from billing_pipeline.fakes.server import free_port

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = ROOT / "tests" / "dagster_test_workspace.yaml"
FAILURE_BOUND_SECONDS = 30  # stated in the README and deploy/dagster.yaml

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dagster_ui")]

LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""
STATUS = "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"
RUNS = "{ runsOrError { ... on Runs { results { runId jobName status } } } }"


def clean_env(home: Path) -> dict:
    drop = ("BILLING_DATABASE_URL", "DAGSTER_HOME", "DAGSTER_PG_URL", "DAGSTER_PG_HOST")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"BILLING_HOME": str(home)}


class UI:
    def __init__(self, proc, port, home):
        self.proc, self.port, self.home = proc, port, home

    def gql(self, query, **variables):
        body = httpx.post(f"http://127.0.0.1:{self.port}/graphql",
                          json={"query": query, "variables": variables}, timeout=60).json()
        assert "errors" not in body, body
        return body["data"]

    def launch(self, job: str) -> str:
        params = {"selector": {"repositoryLocationName": "instance_tests", "repositoryName": "__repository__",
                               "jobName": job}, "runConfigData": {}}
        result = self.gql(LAUNCH, params=params)["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def status(self, run_id: str) -> str:
        return self.gql(STATUS, id=run_id)["runOrError"]["status"]

    def wait_status(self, run_id: str, wanted: set, timeout: float) -> tuple[str, float]:
        started = time.monotonic()
        while True:
            status = self.status(run_id)
            if status in wanted:
                return status, time.monotonic() - started
            assert time.monotonic() - started < timeout, f"run {run_id} still {status} after {timeout} s"
            time.sleep(0.5)

    def dagster_db(self) -> sa.Engine:
        config = yaml.safe_load((self.home / "dagster" / "dagster.yaml").read_text())
        url = sa.make_url(config["storage"]["postgres"]["postgres_url"]).set(drivername="postgresql+psycopg")
        return sa.create_engine(url, poolclass=sa.NullPool)

    def users(self) -> list[int]:
        return json.loads((self.home / "pg" / ".handle_pids.json").read_text() or "[]")


def stop_and_remove(home: Path) -> None:
    """Never leave a server behind: wait for the watchdog, else stop it, then remove the folder."""
    import shutil

    from billing_pipeline.pg_reaper import stop_server

    deadline = time.time() + 20
    while (home / "pg" / "postmaster.pid").exists() and time.time() < deadline:
        time.sleep(0.2)
    if (home / "pg" / "postmaster.pid").exists():
        stop_server(home / "pg")
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def ui():
    home = Path(f"/tmp/bpd-{uuid.uuid4().hex[:8]}")
    home.mkdir()
    port = free_port()
    log = open(home / "ui.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("billing-pipeline")), "ui", "--port", str(port),
         "--workspace", str(WORKSPACE)],
        cwd=ROOT, env=clean_env(home), stdout=log, stderr=subprocess.STDOUT,
    )
    server = UI(proc, port, home)
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, (home / "ui.log").read_text()
        try:
            data = server.gql("{ workspaceOrError { ... on Workspace { locationEntries { name"
                              " locationOrLoadError { __typename } } } } }")
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                break
        except (httpx.TransportError, ValueError):
            pass
        assert time.time() < deadline, "dagster dev did not start:\n" + (home / "ui.log").read_text()
        time.sleep(1)
    yield server
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)
    log.close()
    stop_and_remove(home)


def test_runs_and_events_are_rows_in_postgres(ui):
    run_id = ui.launch("hello_job")
    status, _ = ui.wait_status(run_id, {"SUCCESS", "FAILURE", "CANCELED"}, timeout=180)
    assert status == "SUCCESS"
    listed = {r["runId"]: r for r in ui.gql(RUNS)["runsOrError"]["results"]}
    assert listed[run_id]["jobName"] == "hello_job"
    engine = ui.dagster_db()
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, pipeline_name FROM runs WHERE run_id = :r"),
                           {"r": run_id}).one()
        events = set(conn.execute(
            sa.text("SELECT dagster_event_type FROM event_logs WHERE run_id = :r"), {"r": run_id}).scalars())
        logged = conn.execute(sa.text("SELECT count(*) FROM event_logs WHERE run_id = :r AND event LIKE :m"),
                              {"r": run_id, "m": "%hello from the run worker%"}).scalar()
        daemons = set(conn.execute(sa.text("SELECT daemon_type FROM daemon_heartbeats")).scalars())
    engine.dispose()
    assert tuple(row) == ("SUCCESS", "hello_job")
    # The queue (the daemon dequeues) and the launcher took it there.
    assert {"PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START",
            "PIPELINE_SUCCESS"} <= events, events
    assert logged == 1
    assert {"QUEUED_RUN_COORDINATOR", "MONITORING"} <= daemons, daemons
    # Nothing of Dagster's went to SQLite files.
    assert not list((ui.home / "dagster").rglob("*.db"))


def test_a_runs_step_processes_leave_the_servers_users(ui):
    import re

    run_id = ui.launch("attached_steps_job")
    status, _ = ui.wait_status(run_id, {"SUCCESS", "FAILURE", "CANCELED"}, timeout=180)
    assert status == "SUCCESS"
    engine = ui.dagster_db()
    with engine.connect() as conn:
        logged = conn.execute(sa.text("SELECT event FROM event_logs WHERE run_id = :r AND event LIKE :m"),
                              {"r": run_id, "m": "%attached%"}).scalars().all()
    engine.dispose()
    pids = {int(m) for text in logged for m in re.findall(r"step process (\d+) attached", text)}
    assert len(pids) == 2
    deadline = time.time() + 10
    while pids & set(ui.users()):
        assert time.time() < deadline, f"step processes stayed in the server's users: {ui.users()}"
        time.sleep(0.2)


def test_health_check_reports_a_dead_worker(ui):
    import dagster as dg
    from dagster._core.events import EngineEventData

    from billing_pipeline.dagster_instance import MonitoredRunLauncher
    from dagster._core.launcher import WorkerStatus

    gone = subprocess.Popen(["true"])
    gone.wait()
    with dg.DagsterInstance.from_config(str(ui.home / "dagster")) as instance:
        assert isinstance(instance.run_launcher, MonitoredRunLauncher)
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
        results = {}
        for name, pid in (("alive", os.getpid()), ("dead", gone.pid)):
            run = instance.add_run(dg.DagsterRun(job_name=f"probe_{name}", run_id=str(uuid.uuid4()),
                                                 status=dg.DagsterRunStatus.STARTED))
            assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.UNKNOWN
            instance.report_engine_event(f"Started process for run (pid: {pid}).", run,
                                         EngineEventData.in_process(pid))
            results[name] = instance.run_launcher.check_run_worker_health(run).status
    assert results == {"alive": WorkerStatus.RUNNING, "dead": WorkerStatus.FAILED}


def test_killed_run_worker_ends_failed_within_the_bound(ui):
    import dagster as dg

    from billing_pipeline.dagster_instance import worker_pid

    run_id = ui.launch("sleepy_job")
    ui.wait_status(run_id, {"STARTED"}, timeout=180)
    deadline = time.time() + 120
    with dg.DagsterInstance.from_config(str(ui.home / "dagster")) as instance:
        while (pid := worker_pid(instance, run_id)) is None or pid not in ui.users():
            assert time.time() < deadline, "the run worker did not start or attach to the warehouse"
            time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    status, took = ui.wait_status(run_id, {"SUCCESS", "FAILURE", "CANCELED"}, timeout=FAILURE_BOUND_SECONDS)
    assert status == "FAILURE"
    assert took < FAILURE_BOUND_SECONDS
    # The dead worker does not keep the embedded server: it is dropped from the server's users.
    deadline = time.time() + 10
    while pid in ui.users():
        assert time.time() < deadline, "the killed run worker stayed in the server's users"
        time.sleep(0.2)


def test_monitoring_daemon_fails_a_run_whose_code_server_and_worker_are_gone(ui):
    """The code server fails its own dead children; with it gone too, only run monitoring can."""
    import dagster as dg
    import psutil

    from billing_pipeline.dagster_instance import worker_pid

    run_id = ui.launch("sleepy_job")
    ui.wait_status(run_id, {"STARTED"}, timeout=180)
    deadline = time.time() + 120
    with dg.DagsterInstance.from_config(str(ui.home / "dagster")) as instance:
        while (pid := worker_pid(instance, run_id)) is None:
            assert time.time() < deadline, "the run worker did not start"
            time.sleep(0.5)
    code_server = psutil.Process(pid).parent()
    assert "grpc" in " ".join(code_server.cmdline()), code_server.cmdline()
    code_server.send_signal(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    status, took = ui.wait_status(run_id, {"SUCCESS", "FAILURE", "CANCELED"}, timeout=FAILURE_BOUND_SECONDS)
    assert status == "FAILURE" and took < FAILURE_BOUND_SECONDS
    engine = ui.dagster_db()
    with engine.connect() as conn:
        detected = conn.execute(
            sa.text("SELECT count(*) FROM event_logs WHERE run_id = :r AND event LIKE :m"),
            {"r": run_id, "m": f"%run worker process (pid {pid}) is gone%"},
        ).scalar()
    engine.dispose()
    assert detected >= 1, "the run was not failed by the monitoring daemon's health check"


def test_the_server_stops_when_dagster_dev_ends(ui):
    """Last: `billing-pipeline ui` exec'd `dagster dev`; when it ends, nothing is left using the server."""
    pidfile = ui.home / "pg" / "postmaster.pid"
    assert pidfile.exists()
    assert ui.proc.pid in ui.users()
    ui.proc.send_signal(signal.SIGTERM)
    ui.proc.wait(timeout=60)
    deadline = time.time() + 20
    while pidfile.exists():
        assert time.time() < deadline, f"the embedded server outlived dagster dev: users {ui.users()}"
        time.sleep(0.2)
