"""Failures look like failures: the demo's steps and summary mark a failed run with ✗ in red, never ✓,
and the command exits non-zero naming it."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from billing_pipeline.cli import app

pytestmark = pytest.mark.slow

BREAK_EVENTS = """
CREATE FUNCTION billing.test_refuse_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected failure: billing.events refuses rows'; END $$;
CREATE TRIGGER refuse_events BEFORE INSERT ON billing.events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.test_refuse_events();
"""


def test_a_failed_demo_run_is_drawn_as_a_failure_and_exits_non_zero(engine):
    with engine.begin() as conn:
        conn.execute(sa.text(BREAK_EVENTS))

    result = CliRunner().invoke(app, ["demo", "run", "--month", "2026-10", "--events", "2000"])

    output = result.output
    assert result.exit_code == 1, output
    assert "✗ run hourly FAILED" in output
    assert "1 run(s) FAILED: hourly" in output
    assert not [line for line in output.splitlines() if "✓" in line and "FAILED" in line]
    assert re.search(r"hourly .*✗ FAILED", output)  # the summary table's row
