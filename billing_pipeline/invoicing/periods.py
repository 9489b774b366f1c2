"""Invoicing months: a period is [first day of a month, first day of the next), in UTC."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timezone

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def parse_month(text: str) -> date:
    """'2026-10' -> date(2026, 10, 1); ValueError with the expected format otherwise."""
    match = _MONTH.match(text.strip()) if isinstance(text, str) else None
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"not a month: {text!r} (expected YYYY-MM, e.g. 2026-10)")
    return date(int(match.group(1)), int(match.group(2)), 1)


def month_of(day: date) -> date:
    return day.replace(day=1)


def next_month(period_start: date) -> date:
    return date(period_start.year + period_start.month // 12, period_start.month % 12 + 1, 1)


def check_period_start(period_start: date) -> date:
    if not isinstance(period_start, date) or isinstance(period_start, datetime) or period_start.day != 1:
        raise ValueError(f"a period starts on the first day of a month (a date), got {period_start!r}")
    return period_start


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


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
