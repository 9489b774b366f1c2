"""`make ui` serves the code location: dagster-webserver on a free loopback port answers GraphQL."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from billing_pipeline.fakes.server import free_port

ROOT = Path(__file__).resolve().parent.parent
QUERY = """
{
  workspaceOrError { __typename ... on Workspace { locationEntries { name
      locationOrLoadError { __typename ... on PythonError { message } } } } }
  assetNodes { assetKey { path } groupName isPartitioned }
}
"""


@pytest.mark.slow
def test_webserver_serves_the_asset_graph(tmp_path):
    port = free_port()
    env = os.environ | {"DAGSTER_HOME": str(tmp_path), "BILLING_HOME": str(tmp_path / "home")}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    webserver = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(webserver), "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "webserver did not start"
            time.sleep(0.5)
        data = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": QUERY}, timeout=60).json()["data"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    entries = data["workspaceOrError"]["locationEntries"]
    assert [e["name"] for e in entries] == ["billing_pipeline"]
    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries[0]
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert nodes["warehouse_events"]["groupName"] == "ingestion" and nodes["warehouse_events"]["isPartitioned"]
    assert "event_reconciliation" in nodes and "edge_retention" in nodes
