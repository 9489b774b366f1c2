"""dbt invoked in-process (dbt's programmatic `dbtRunner`) behind dagster-dbt's `DbtCliResource`.

Why: a `dbt` subprocess costs ~6 s before its first statement on two cores (Python imports, a full
parse of the project, since the run's vars and the profile's connection settings defeat partial
parsing, and writing the manifest), against well under a second of SQL for a one-day refresh.
In-process, dbt is imported once per process and the project is parsed once per process and
connection settings, then every invocation gets a copy of that parsed manifest
(`dbtRunner(manifest=...)`): no parse per run.

The vars (the partition window, the visibility horizon) do not need a parse: the project reads
them only in model bodies and macros (`var()` in `usage_window` and `usage_period`), which dbt
renders when it compiles a node for the run, from the invocation's `--vars`; no `config()`,
`ref()` or `source()` depends on a var. The connection settings do (nodes carry the profile's
database and schema), so the parse happens under the run's dbt environment and the manifest is
cached per environment; its partial-parse file lives in a folder per environment (named by a hash:
no secret on disk), so a fresh process (a run worker) re-parses partially, in ~0.4 s.

What dagster-dbt gives is unchanged: the invocation is a `DbtCliInvocation` whose event stream is
dbt's structured events (the same JSON a subprocess writes with `--log-format json`, taken from a
dbtRunner callback), so `stream()` yields the same outputs, materializations and asset checks,
and the target folder still gets run_results.json and dbt.log. Not written per run: manifest.json
copies and the partial-parse file.

Concurrency: dbt keeps process-global state (flags, the event manager's callbacks, the adapter
registry, the invocation context read from os.environ), so invocations in one process are
serialized by a process-wide lock (runs on the usage models are serialized across processes anyway,
by `late_events.usage_dbt_lock`). Each invocation has its own dbtRunner; they share the parsed
manifest, one after the other: a run compiles its nodes into it (compiled_code, relation names),
which the next run compiles again from the nodes' raw code with its own vars, as dbt's documented
reuse of a manifest across invocations does. (A deep copy per run breaks dbt's cached lookups; a
pickle round trip costs ~0.2 s.) Runs in other processes (the daemon's run workers, multiprocess
steps) each have their own dbt state.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import get_dagster_logger
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster_dbt.asset_utils import extract_runtime_selection_from_args, get_updated_cli_invocation_params_for_context
from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation
from dagster_dbt.dagster_dbt_translator import DagsterDbtTranslator, validate_opt_translator
from dagster_dbt.dbt_manifest import validate_manifest

log = get_dagster_logger()

# dbt's process-global state: one invocation (or parse) at a time in this process.
_DBT_LOCK = threading.RLock()
_MANIFESTS: dict[tuple, Any] = {}
# the variables that change what a parse produces (profiles.yml reads them)
_ENV_PREFIXES = ("BILLING_DBT_", "DBT_ENV_SECRET_", "DBT_TARGET", "DBT_PROFILE")
_LOG_LEVELS = {"info", "warn", "error"}  # what a subprocess prints with --log-format json


def _env_key(environ: Mapping[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in environ.items() if k.startswith(_ENV_PREFIXES)))


def _sources_mtime(project_dir: Path) -> float:
    newest = 0.0
    for pattern in ("dbt_project.yml", "profiles.yml", "models/**/*", "macros/**/*", "tests/**/*"):
        for path in project_dir.glob(pattern):
            if path.is_file():
                newest = max(newest, path.stat().st_mtime)
    return newest


def _location_args(project_dir: Path, profiles_dir: Path, target_path: Path) -> list[str]:
    return [
        "--project-dir", str(project_dir),
        "--profiles-dir", str(profiles_dir),
        "--target-path", str(target_path),
        "--log-path", str(target_path),
    ]  # fmt: skip


_KEEP_PARSE_FOLDERS = 8


def _prune_parse_folders(target_root: Path, keep: Path) -> None:
    """Keep the partial-parse folders of the few most recently used environments (every test or
    benchmark warehouse is an environment of its own)."""
    folders = sorted(target_root.glob("inprocess-parse-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders[_KEEP_PARSE_FOLDERS:]:
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)


def parsed_manifest(project_dir: Path, profiles_dir: Path, target_root: Path) -> Any:
    """The project's dbt Manifest for the current dbt environment, parsed once per process
    (partial parsing from the environment's own folder under `target_root`). Call under _DBT_LOCK."""
    from dbt.cli.main import dbtRunner

    env_key = _env_key(os.environ)
    key = (str(project_dir), str(profiles_dir), env_key, _sources_mtime(project_dir))
    manifest = _MANIFESTS.get(key)
    if manifest is None:
        digest = hashlib.sha256(repr((str(profiles_dir), env_key)).encode()).hexdigest()[:12]
        parse_target = target_root / f"inprocess-parse-{digest}"
        result = dbtRunner().invoke(
            [
                "parse",
                *_location_args(project_dir, profiles_dir, parse_target),
                "--no-write-json",
                "--log-level", "none",
                "--log-level-file", "none",
            ]  # fmt: skip
        )
        if not result.success:
            raise RuntimeError(f"dbt could not parse {project_dir}: {result.exception}")
        manifest = result.result
        for stale in [k for k in _MANIFESTS if k[:3] == key[:3]]:
            del _MANIFESTS[stale]
        _MANIFESTS[key] = manifest
        _prune_parse_folders(target_root, keep=parse_target)
    return manifest


@dataclass
class InProcessDbt:
    """Stands in for the subprocess a `DbtCliInvocation` holds: runs dbtRunner on a thread and
    hands its events over as the JSON dicts a subprocess would print."""

    args: list[str]
    project_dir: Path
    profiles_dir: Path
    target_root: Path
    returncode: int | None = None
    exception: BaseException | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None

    _DONE = object()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="dbt-in-process", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from dbt.cli.main import dbtRunner
        from dbt_common.events.functions import msg_to_dict

        def forward(msg) -> None:
            if msg.info.level in _LOG_LEVELS:
                self.events.put(msg_to_dict(msg))

        try:
            with _DBT_LOCK:
                manifest = parsed_manifest(self.project_dir, self.profiles_dir, self.target_root)
                result = dbtRunner(manifest=manifest, callbacks=[forward]).invoke(self.args[1:])
            self.exception = result.exception
            self.returncode = 0 if result.success else (2 if result.exception is not None else 1)
        except BaseException as exc:  # noqa: BLE001 - reported as the invocation's error
            self.exception = exc
            self.returncode = 2
        finally:
            if self.exception is not None:  # as an error line of the log (dagster-dbt shows those)
                message = f"{type(self.exception).__name__}: {self.exception}"
                self.events.put({"info": {"level": "error", "msg": message, "name": "InProcessDbtError"}, "data": {}})
            self.events.put(self._DONE)

    streamed: bool = False

    def stream(self) -> Iterator[dict[str, Any]]:
        """The events, once (like a pipe: read again, e.g. by is_successful(), it is empty)."""
        while not self.streamed:
            item = self.events.get()
            if item is self._DONE:
                self.streamed = True
                return
            yield item

    def wait(self, timeout: float | None = None) -> int | None:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.returncode


@dataclass
class InProcessDbtCliInvocation(DbtCliInvocation):
    """A DbtCliInvocation over an in-process dbt: everything but where the events come from is
    dagster-dbt's own."""

    def _stream_stdout(self) -> Iterator[str | dict[str, Any]]:
        process: InProcessDbt = self.process  # type: ignore[assignment]
        try:
            for raw_event in process.stream():
                if raw_event["info"]["level"] == "error":
                    self._error_messages.append(raw_event["info"]["msg"])
                yield raw_event
            process.wait()
        except DagsterExecutionInterruptedError:
            # dbt has no cancel call: let it finish (the usage lock must not be released under it)
            log.info("interrupted; waiting for the in-process dbt command to finish")
            process.wait(self.termination_timeout_seconds)
            raise

    @property
    def dbt_command(self) -> str:  # the args as a subprocess would have them
        return "dbt (in-process) " + " ".join(self.process.args[1:])


def in_process_cli(
    self,
    args: Sequence[str],
    *,
    raise_on_error: bool = True,
    manifest=None,
    dagster_dbt_translator: DagsterDbtTranslator | None = None,
    context=None,
    target_path: Path | None = None,
) -> DbtCliInvocation:
    """`DbtCliResource.cli` (self: the resource), with dbt run in this process (see the module's
    docstring)."""
    dagster_dbt_translator = validate_opt_translator(dagster_dbt_translator) or DagsterDbtTranslator()
    manifest = validate_manifest(manifest) if manifest else {}
    cleaned_args, runtime_selects, runtime_excludes = extract_runtime_selection_from_args(args)
    params = get_updated_cli_invocation_params_for_context(
        context=context,
        manifest=manifest,
        dagster_dbt_translator=dagster_dbt_translator,
        runtime_selects=runtime_selects,
        runtime_excludes=runtime_excludes,
    )
    project_dir = Path(params.dbt_project.project_dir if params.dbt_project else self.project_dir)
    target_path = target_path or self._get_unique_target_path(context=context)
    if not target_path.is_absolute():
        target_path = project_dir.joinpath(target_path)
    profiles_dir = Path(self.profiles_dir) if self.profiles_dir else project_dir
    extra: list[str] = []
    if self.profile:
        extra += ["--profile", self.profile]
    if self.target:
        extra += ["--target", self.target]
    if params.indirect_selection:
        extra += ["--indirect-selection", params.indirect_selection]
    full_args = [
        "dbt",
        *self.global_config_flags,
        *cleaned_args,
        *extra,
        *params.selection_args,
        *_location_args(project_dir, profiles_dir, target_path),
        # events reach Dagster through the callback (printed by dagster-dbt); dbt.log keeps
        # the debug log (statements and their timings) as a subprocess's would
        "--log-format", "json",
        "--log-level", "none",
        "--log-level-file", "debug",
    ]  # fmt: skip
    process = InProcessDbt(
        args=full_args,
        project_dir=project_dir,
        profiles_dir=profiles_dir,
        target_root=target_path.parent,
    )
    invocation = InProcessDbtCliInvocation(
        process=process,  # type: ignore[arg-type]
        manifest=params.manifest,
        dagster_dbt_translator=params.dagster_dbt_translator,
        project_dir=project_dir,
        target_path=target_path,
        raise_on_error=raise_on_error,
        context=context,
        adapter=None,  # dagster-dbt's adapter handle: only for column metadata, not used here
        cli_version=self._cli_version,
        project=params.dbt_project,
    )
    log.info(f"Running dbt command: `{invocation.dbt_command}`.")
    process.start()
    return invocation

