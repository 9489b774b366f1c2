"""Nothing leaves the machine: telemetry off for Dagster, dbt and Great Expectations.

Set before those libraries read their settings (imported first by the CLI and the definitions).
Dagster's own switch (`telemetry: enabled: false`) is also in the dagster.yaml files we write.
"""

import os

_OFF = {
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "GX_ANALYTICS_ENABLED": "false",
}


def disable_telemetry() -> None:
    for key, value in _OFF.items():
        os.environ.setdefault(key, value)
