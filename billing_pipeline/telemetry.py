"""Nothing leaves the machine: telemetry off for Dagster, dbt and Great Expectations; and the
libraries' notices about their own API status stay out of the user's terminal.

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


def quiet_library_warnings() -> None:
    """Dagster's beta/preview notices (backfill_policy, partitioned checks) and platformdirs' notice
    about XDG_RUNTIME_DIR (pgserver's lock folder) are about the libraries, not about the user's data."""
    import warnings

    import dagster as dg

    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
