"""Shared by the benchmarks: a private embedded PostgreSQL, timing, and the JSON line format."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from billing_pipeline.telemetry import disable_telemetry

disable_telemetry()

# Standard output carries the figures only (JSON lines, `make bench > figures.jsonl`): what the
# product prints while a benchmark runs it (dbt's progress lines, which dagster-dbt prints for the
# compute logs) goes to standard error.
FIGURES = sys.stdout
sys.stdout = sys.stderr


@contextmanager
def bench_home():
    """A temporary BILLING_HOME with its own embedded PostgreSQL, migrated; yields Settings."""
    from billing_pipeline import migrations
    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import dispose_engines, get_engine, stop_embedded

    home = Path(tempfile.mkdtemp(prefix="bpb-", dir="/tmp"))
    saved = {k: os.environ.get(k) for k in ("BILLING_HOME", "BILLING_DATABASE_URL", "BILLING_EDGE_PATH")}
    os.environ["BILLING_HOME"] = str(home)
    os.environ.pop("BILLING_DATABASE_URL", None)
    os.environ.pop("BILLING_EDGE_PATH", None)
    settings = load_settings()
    try:
        migrations.upgrade(get_engine(settings))
        yield settings
    finally:
        dispose_engines()
        stop_embedded(settings)
        shutil.rmtree(home, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def report(bench: str, figure: str, value: float, baseline: str | None = None,
           baseline_value: float | None = None) -> dict:
    """Print one figure as a JSON line; ratio = value / baseline_value (the figure's name says
    whether higher is better: *_per_s higher, *_s lower)."""
    line = {"bench": bench, "figure": figure, "value": round(value, 3)}
    if baseline is not None and baseline_value:
        line |= {"baseline": baseline, "baseline_value": round(baseline_value, 3),
                 "ratio": round(value / baseline_value, 3)}
    print(json.dumps(line), file=FIGURES, flush=True)
    return line
