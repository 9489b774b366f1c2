"""The dbt project (`dbt_project/` at the repository root) as Dagster sees it.

The manifest: under `dagster dev` it is rebuilt on every load (as `prepare_if_dev` does); elsewhere
it is built at first use, when `target/manifest.json` is missing or older than a file of the project
(deployments can build it ahead with `dagster-dbt project prepare-and-package`). A failed build never
stops the code location from loading: the error is logged and the last good manifest is used, or the
dbt assets are left out until the project parses again.

Connection: dbt's profile reads its settings from environment variables, which `dbt_environment`
sets from the same settings the rest of the pipeline uses (`libpq_params(load_settings())`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, cached_property
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject
from filelock import FileLock
from dagster_dbt.dbt_project import using_dagster_dev

from billing_pipeline.settings import Settings
from billing_pipeline.warehouse import libpq_params

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"
_SOURCE_GLOBS = ("dbt_project.yml", "profiles.yml", "models/**/*", "macros/**/*", "tests/**/*")

usage_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)


def dbt_executable() -> str:
    """dbt from this interpreter's environment first (a venv's python run without the venv on PATH)."""
    beside = Path(sys.executable).parent / "dbt"
    if beside.exists():
        return str(beside)
    return shutil.which("dbt") or "dbt"


def _newest_source_mtime(project: DbtProject) -> float:
    newest = 0.0
    for pattern in _SOURCE_GLOBS:
        for path in project.project_dir.glob(pattern):
            if path.is_file():
                newest = max(newest, path.stat().st_mtime)
    return newest


def manifest_is_current(project: DbtProject = usage_dbt_project) -> bool:
    path = project.manifest_path
    return path.exists() and path.stat().st_mtime >= _newest_source_mtime(project)


@cache
def _dbt_version(executable: str):
    from packaging import version

    output = subprocess.check_output([executable, "--version"], text=True)
    return version.parse(re.search(r"(\d+\.\d+\.\d+)", output).group(1))


class UsageDbtCliResource(DbtCliResource):
    """DbtCliResource that runs dbt in this process by default (`in_process`, see
    `dbt_inprocess`), and otherwise asks `dbt --version` once per process, not once per run.

    dagster-dbt runs `dbt --version` (a Python process importing dbt: 1.5 to 3 s here) the first time
    each resource instance invokes dbt, and Dagster builds the resource afresh for every run; the
    answer only changes when dbt is reinstalled, which restarts the code location anyway.
    """

    in_process: bool = True
    """Run dbt with dbtRunner in this process, on a manifest parsed once per process, instead of a
    `dbt` subprocess per invocation (which parses the project again each time)."""

    @cached_property
    def _cli_version(self):
        if self.in_process:
            from dbt.version import __version__
            from packaging import version

            return version.parse(__version__)
        return _dbt_version(self.dbt_executable)

    def cli(self, args, **kwargs):
        if self.in_process:
            try:  # it builds on dagster-dbt's invocation internals: a release that moves them falls back
                from billing_pipeline.defs.usage.dbt_inprocess import in_process_cli
            except ImportError as exc:
                logging.getLogger(__name__).warning("dbt runs as a subprocess: in-process dbt unavailable (%s)", exc)
            else:
                return in_process_cli(self, args, **kwargs)
        return super().cli(args, **kwargs)


def usage_dbt_resource(in_process: bool = True) -> UsageDbtCliResource:
    return UsageDbtCliResource(
        project_dir=usage_dbt_project, dbt_executable=dbt_executable(), in_process=in_process
    )


def _parse(project: DbtProject) -> None:
    dbt = UsageDbtCliResource(project_dir=project, dbt_executable=dbt_executable(), in_process=False)
    dbt.cli(["parse", "--quiet"], target_path=project.target_path).wait()


def prepare_manifest(project: DbtProject = usage_dbt_project) -> Path | None:
    """The manifest to load the dbt assets from, built if needed; None when there is none.

    `dbt parse` needs no database connection; a file lock makes concurrent processes (run workers,
    test workers) build it once.
    """
    try:
        force = using_dagster_dev()  # prepare_if_dev's rule: always fresh under `dagster dev`
        if force or not manifest_is_current(project):
            project.manifest_path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(project.manifest_path.with_suffix(".lock")), timeout=300):
                if force or not manifest_is_current(project):
                    _parse(project)
    except Exception:  # the code location must load even when dbt cannot parse the project
        fallback = (
            "using the previous manifest" if project.manifest_path.exists() else "the dbt assets are left out"
        )
        log.exception("could not build the dbt manifest for %s; %s", project.project_dir, fallback)
    return project.manifest_path if project.manifest_path.exists() else None


_KEEP_ARTIFACTS = {"run_results.json", "dbt.log"}


def prune_invocation_artifacts(target_path: Path) -> None:
    """Keep an invocation's run_results.json and dbt.log; drop its copies of the manifest, the
    partial-parse file, the graph and the compiled SQL (~1.7 MB a run; dagster-dbt gives every
    invocation its own target folder, so they would pile up run after run)."""
    if not target_path.is_dir():
        return
    for path in target_path.iterdir():
        if path.name in _KEEP_ARTIFACTS:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def dbt_env(settings: Settings) -> dict[str, str]:
    """The variables dbt_project/profiles.yml reads, for this warehouse."""
    params = libpq_params(settings)
    return {
        "BILLING_DBT_HOST": params["host"],
        "BILLING_DBT_PORT": params["port"],
        "BILLING_DBT_USER": params["user"],
        # dbt scrubs DBT_ENV_SECRET_* values from its logs
        "DBT_ENV_SECRET_BILLING_DBT_PASSWORD": params["password"],
        "BILLING_DBT_DBNAME": params["dbname"],
    }


@contextmanager
def dbt_environment(settings: Settings) -> Iterator[dict[str, str]]:
    """Point dbt at this warehouse for the duration of a dbt invocation (subprocess and in-process
    adapter both read the process environment), then restore what was there."""
    env = dbt_env(settings)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
