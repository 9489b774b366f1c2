"""Dagster's own home for the embedded mode: BILLING_HOME/dagster with SQLite instance storage.

The demo's runs and `make ui` share it, so the demo's runs appear in the UI's history.
Production uses the repository's dagster.yaml (dagster-postgres storage) instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from billing_pipeline.settings import Settings

INSTANCE_YAML = """\
# Written by billing_pipeline for the embedded (development) mode: SQLite storage in this folder.
telemetry:
  enabled: false
"""


def ensure_dagster_home(settings: Settings) -> Path:
    """Create BILLING_HOME/dagster with its dagster.yaml, point DAGSTER_HOME at it, return it."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
