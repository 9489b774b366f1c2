"""The clock of the accounts logic, injectable so tests can stand on any instant (a month boundary,
the last day of a grace period) without waiting or patching the system time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware UTC datetime."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


@dataclass
class FixedClock:
    """Stands still at `at` until moved with `advance`."""

    at: datetime

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime (e.g. tzinfo=timezone.utc)")

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> datetime:
        self.at += delta
        return self.at


def as_of(window_end: datetime, clock: Clock) -> datetime:
    """The instant a partition's accounts are decided at: the end of its window, never in the future
    (today's partition, materialized during the day, decides as of now)."""
    return min(window_end, clock.now())
