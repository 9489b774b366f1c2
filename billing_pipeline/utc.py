"""Calendar arithmetic in UTC, the one time zone of every partition: days and months."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timezone

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def utc_midnight(day: date) -> datetime:
    """The instant a UTC day starts."""
    return datetime.combine(day, time(), tzinfo=timezone.utc)


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    """The first day of the month after `day`'s."""
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def parse_month(text: str) -> date:
    """'2026-10' -> date(2026, 10, 1); ValueError with the expected format otherwise."""
    match = _MONTH.match(text.strip()) if isinstance(text, str) else None
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"not a month: {text!r} (expected YYYY-MM, e.g. 2026-10)")
    return date(int(match.group(1)), int(match.group(2)), 1)
