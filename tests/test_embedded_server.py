"""Several processes share one embedded PostgreSQL in BILLING_HOME/pg; the last to leave stops it."""

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

WORKER = r"""
import os, sys, time, pathlib
import sqlalchemy as sa
from billing_pipeline.settings import load_settings
from billing_pipeline.warehouse import get_engine
name, wait_for = sys.argv[1], sys.argv[2:]
signals = pathlib.Path(os.environ["SIGNALS"])
engine = get_engine(load_settings())
with engine.begin() as conn:
    conn.execute(sa.text("CREATE TABLE IF NOT EXISTS visits (name text)"))
    conn.execute(sa.text("INSERT INTO visits VALUES (:n)"), {"n": name})
(signals / f"{name}.ready").touch()
deadline = time.time() + 60
while not all((signals / w).exists() for w in wait_for):
    assert time.time() < deadline, "timed out waiting for " + str(wait_for)
    time.sleep(0.05)
with engine.connect() as conn:
    seen = sorted(conn.execute(sa.text("SELECT name FROM visits")).scalars())
print(",".join(seen), flush=True)
"""


@pytest.mark.slow
def test_two_processes_share_one_server(tmp_path):
    home = Path(f"/tmp/bps-{uuid.uuid4().hex[:8]}")
    signals = tmp_path / "signals"
    signals.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "BILLING_DATABASE_URL"}
    env |= {"BILLING_HOME": str(home), "SIGNALS": str(signals)}
    try:
        first = subprocess.Popen([sys.executable, "-c", WORKER, "first", "second.ready"], env=env,
                                 stdout=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not (signals / "first.ready").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        # The second process attaches to the server the first one started, while the first is still up.
        second = subprocess.Popen([sys.executable, "-c", WORKER, "second", "first.done"], env=env,
                                  stdout=subprocess.PIPE, text=True)
        out_first, _ = first.communicate(timeout=120)
        assert first.returncode == 0 and out_first.strip() == "first,second"
        assert (home / "pg" / "postmaster.pid").exists(), "server stopped while the second process used it"
        (signals / "first.done").touch()
        out_second, _ = second.communicate(timeout=120)
        assert second.returncode == 0 and out_second.strip() == "first,second"
        deadline = time.time() + 30
        while (home / "pg" / "postmaster.pid").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert not (home / "pg" / "postmaster.pid").exists(), "the last process out did not stop the server"
    finally:
        shutil.rmtree(home, ignore_errors=True)
