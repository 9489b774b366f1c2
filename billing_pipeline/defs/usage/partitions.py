"""Usage partitions: one per UTC calendar day of occurred_at."""

from __future__ import annotations

from datetime import date, datetime

from billing_pipeline.defs.partitions import daily

# The project's shared daily partitions (UTC days from billing_pipeline.defs.partitions.START).
usage_daily_partitions = daily


def window_dates(start: datetime, end: datetime) -> tuple[date, date]:
    """A partition time window (UTC midnights) as the half-open day range [min_date, max_date)."""
    return start.date(), end.date()


def dbt_vars(start: date, end: date) -> dict[str, str]:
    """The vars the dbt models read for a window (see dbt_project/macros/usage_window.sql)."""
    return {"min_date": start.isoformat(), "max_date": end.isoformat()}
