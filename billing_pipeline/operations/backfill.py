"""Backfills from the command line, as the UI makes them: Dagster asset backfills on BILLING_HOME's
instance, selected by group or asset name and a plain time range.

The range becomes each asset's own partition keys (hourly `2026-10-01-00:00`, daily `2026-10-01`,
monthly `2026-10-01`): every partition whose whole window lies in [start, end). The backfill is
launched through Dagster's GraphQL API (`launchPartitionBackfill`, the UI's own mutation, executed by
the `dagster-graphql` command against workspace.yaml), so the UI lists it as a backfill and the
backfill daemon runs it, one run per range where the asset's BackfillPolicy is single-run. Waiting
for it starts a `dagster-daemon` for the duration when none is running on the instance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

WORKSPACE = Path(__file__).resolve().parents[2] / "workspace.yaml"
BACKFILL_TAG = "dagster/backfill"
_TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
_FAILED_RUNS = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class BackfillError(RuntimeError):
    pass


def parse_bound(value: str, *, end: bool) -> datetime:
    """A plain date (the whole day: `--to 2026-10-07` includes the 7th) or an ISO instant (UTC when it
    names no offset; exclusive as an end)."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start + timedelta(days=1) if end else start
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BackfillError(f"{value!r} is neither a date (2026-10-01) nor an instant (2026-10-01T06:00Z)") from None
    return instant.replace(tzinfo=instant.tzinfo or UTC).astimezone(UTC)


@dataclass(frozen=True)
class AssetRange:
    key: dg.AssetKey
    first: str
    last: str
    count: int


def select(groups: Iterable[str], names: Iterable[str], start: datetime, end: datetime) -> tuple[list[AssetRange], list[str]]:
    """The partitioned assets of `groups` and `names` with their keys in [start, end); and why others
    were left out (unpartitioned, or no whole partition in the range)."""
    from billing_pipeline.definitions import defs

    if end <= start:
        raise BackfillError(f"the range is empty: {start:%Y-%m-%d %H:%M} is not before {end:%Y-%m-%d %H:%M}")
    graph = defs.resolve_asset_graph()
    groups, names = set(groups), set(names)
    known = {k.to_user_string(): k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    unknown = sorted(names - set(known))
    unknown_groups = sorted(groups - {graph.get(k).group_name for k in known.values()})
    if unknown or unknown_groups:
        raise BackfillError(
            "no such " + "; ".join(filter(None, [
                f"asset(s): {', '.join(unknown)}" if unknown else "",
                f"group(s): {', '.join(unknown_groups)}" if unknown_groups else "",
            ]))
        )
    chosen = sorted(
        (k for name, k in known.items() if name in names or graph.get(k).group_name in groups),
        key=lambda k: k.to_user_string(),
    )
    if not chosen:
        raise BackfillError("select assets with --group or --asset")
    ranges, skipped = [], []
    for key in chosen:
        partitions = graph.get(key).partitions_def
        if not isinstance(partitions, dg.TimeWindowPartitionsDefinition):
            skipped.append(f"{key.to_user_string()}: not partitioned by time")
            continue
        keys = [
            k for k in partitions.get_partition_keys(current_time=end)
            if start <= partitions.time_window_for_partition_key(k).start
            and partitions.time_window_for_partition_key(k).end <= end
        ]
        if not keys:
            skipped.append(f"{key.to_user_string()}: no whole partition in the range")
            continue
        ranges.append(AssetRange(key, keys[0], keys[-1], len(keys)))
    if not ranges:
        raise BackfillError("nothing to backfill: " + "; ".join(skipped))
    return ranges, skipped


_LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""
_RERUN = """
mutation Rerun($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""


def _graphql(query: str, variables: dict, field_name: str) -> str:
    """Run a mutation in-process against workspace.yaml on DAGSTER_HOME's instance; the backfill id."""
    command = shutil.which("dagster-graphql") or str(Path(sys.executable).with_name("dagster-graphql"))
    done = subprocess.run(
        [command, "-w", str(WORKSPACE), "-t", query, "-v", json.dumps(variables)],
        capture_output=True, text=True, env=os.environ, check=False,
    )
    answers = [line for line in done.stdout.splitlines() if line.startswith(('{"data"', '{"errors"'))]
    if not answers:  # the code server logs around the answer, on the same stream
        raise BackfillError(f"dagster-graphql failed: {(done.stderr or done.stdout)[-2000:]}")
    answer = json.loads(answers[-1])
    if answer.get("errors"):
        raise BackfillError("; ".join(e.get("message", str(e)) for e in answer["errors"]))
    result = answer["data"][field_name]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"{result['__typename']}: {result.get('message', '')}")
    return result["backfillId"]


def launch(ranges: list[AssetRange], tags: dict[str, str], title: str) -> str:
    params = {
        "partitionsByAssets": [
            {"assetKey": {"path": r.key.path}, "partitions": {"range": {"start": r.first, "end": r.last}}}
            for r in ranges
        ],
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
        "title": title,
    }
    return _graphql(_LAUNCH, {"params": params}, "launchPartitionBackfill")


def rerun_failed(backfill_id: str) -> str:
    """A new backfill of what the given one did not materialize (its failed partitions and those
    downstream of them): Dagster's 'Re-execute from failure' of a backfill, with the parent's tags."""
    return _graphql(_RERUN, {"params": {"parentRunId": backfill_id, "strategy": "FROM_FAILURE"}},
                    "reexecutePartitionBackfill")


@dataclass
class Outcome:
    backfill_id: str
    status: str
    runs: list[dg.DagsterRun] = field(default_factory=list)

    @property
    def failed_runs(self) -> list[dg.DagsterRun]:
        return [r for r in self.runs if r.status in _FAILED_RUNS]

    @property
    def ok(self) -> bool:
        return self.status in ("COMPLETED", "COMPLETED_SUCCESS") and not self.failed_runs


def _daemon_alive(instance: dg.DagsterInstance, within: float = 60.0) -> bool:
    beat = instance.get_daemon_heartbeats().get("BACKFILL")
    return beat is not None and time.time() - beat.timestamp < within


def _start_daemon() -> subprocess.Popen:
    command = shutil.which("dagster-daemon") or str(Path(sys.executable).with_name("dagster-daemon"))
    log = Path(os.environ["DAGSTER_HOME"]) / "backfill-daemon.log"  # what it said, for when it fails
    with log.open("ab") as out:
        return subprocess.Popen(
            [command, "run", "-w", str(WORKSPACE)], env=os.environ,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def wait(
    instance: dg.DagsterInstance,
    backfill_id: str,
    on_progress: Callable[[Outcome], None] = lambda _: None,
    timeout: float = 3600.0,
    poll: float = 1.0,
) -> Outcome:
    """Until the backfill is over. When no daemon beats on the instance (`make ui` runs one), one of our
    own runs for the duration (it also runs the schedules and sensors, as any daemon does)."""
    daemon = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            if daemon is None and not _daemon_alive(instance):
                daemon = _start_daemon()
            backfill = instance.get_backfill(backfill_id)
            if backfill is None:
                raise BackfillError(f"no backfill {backfill_id} on this instance")
            runs = list(instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})))
            outcome = Outcome(backfill_id, backfill.status.value, runs)
            on_progress(outcome)
            if outcome.status in _TERMINAL and all(r.is_finished for r in runs):
                return outcome
            if daemon is not None and daemon.poll() is not None:
                raise BackfillError(
                    f"dagster-daemon exited with {daemon.returncode} before backfill {backfill_id} ended"
                    f" (see {os.environ['DAGSTER_HOME']}/backfill-daemon.log)"
                )
            if time.monotonic() > deadline:
                raise BackfillError(f"backfill {backfill_id} still {outcome.status} after {timeout:.0f} s")
            time.sleep(poll)
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
            # Its heartbeats would look alive for a minute; it was the only daemon (none beat when it
            # started), so the next command must not wait on a daemon that is gone.
            instance.wipe_daemon_heartbeats()
