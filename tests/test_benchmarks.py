"""Every benchmark still runs (tiny sizes) and prints its figures as DESIGN.md's JSON lines.

The figures themselves are measured by `make bench`; here only that the scripts work end to end.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TINY = {
    "bench_accounts.py": ["--organisations", "200", "--sample", "20"],
    "bench_calls.py": ["--calls", "200", "--per-call-sample", "20"],
    "bench_collection.py": ["--invoices", "50"],
    "bench_history.py": ["--months", "1,2", "--events-per-month", "6000", "--day-events", "3000",
                         "--charges-per-day", "2000", "--orgs", "50"],
    "bench_ingestion.py": ["--events", "3000", "--backfill-events", "500", "--per-row-sample", "20"],
    "bench_invoicing.py": ["--orgs", "40", "--loop-sample", "5"],
    "bench_month.py": ["--events", "12000,24000", "--orgs", "100", "--charges", "3000"],
    "bench_payments.py": ["--records", "3000", "--posts", "50"],
    "bench_usage.py": ["--events", "5000", "--refresh-rounds", "1"],
}


def test_every_benchmark_is_covered():
    assert sorted(p.name for p in BENCH.glob("bench_*.py")) == sorted(TINY)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_and_prints_json_figures(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *TINY[script]], capture_output=True, text=True, timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # standard output holds the figures and nothing else (bench/common.py sends the rest to stderr)
    figures = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    with_figure = [f for f in figures if "figure" in f]
    assert with_figure, done.stdout
    for line in with_figure:
        assert line["bench"] and isinstance(line["value"], (int, float)), line
        if "baseline" in line:  # a baseline measured in the same run, and the ratio to it
            assert line["baseline_value"] > 0 and line["ratio"] > 0, line
