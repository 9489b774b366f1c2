"""Invoicing months: a period is [first day of a month, first day of the next), in UTC."""

from __future__ import annotations

from datetime import date, datetime

from billing_pipeline.utc import month_start, next_month, parse_month, utc_midnight

__all__ = ["bounds", "check_period_start", "label", "month_start", "next_month", "parse_month", "utc_midnight"]

def check_period_start(period_start: date) -> date:
    if not isinstance(period_start, date) or isinstance(period_start, datetime) or period_start.day != 1:
        raise ValueError(f"a period starts on the first day of a month (a date), got {period_start!r}")
    return period_start


def bounds(period_start: date) -> dict:
    """Bound parameters every invoicing query takes: the dates and the UTC instants of the period."""
    check_period_start(period_start)
    end = next_month(period_start)
    return {
        "period_start": period_start,
        "period_end": end,
        "period_start_ts": utc_midnight(period_start),
        "period_end_ts": utc_midnight(end),
    }


def label(period_start: date) -> str:
    return period_start.strftime("%Y-%m")
