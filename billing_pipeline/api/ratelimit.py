"""Per-key rate limiting: a token bucket per key, in memory (one process; see `serve`).

`limit` requests per `period` seconds, in bursts of up to `limit`; a key that has spent its tokens
is told how long until the next one (the 429's Retry-After). The buckets are keyed by API key id,
and only authenticated callers reach the limiter, so the table is bounded by the number of keys.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

_EPSILON = 1e-9  # float dust: a client that waits exactly Retry-After must get through
_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+)?\s*(second|minute|hour|day)s?\s*", re.IGNORECASE)


def parse_rate(text: str) -> tuple[int, float]:
    """'100/second' -> (100, 1.0); '10/5minutes' -> (10, 300.0)."""
    match = _RATE.fullmatch(text)
    if not match or int(match[1]) < 1 or match[2] == "0":
        raise ValueError(f"rate limit must look like '100/second' or '1000/minute', not {text!r}")
    return int(match[1]), int(match[2] or 1) * _UNITS[match[3].lower()]


class RateLimiter:
    def __init__(self, limit: int, period: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.period = period
        self.clock = clock
        self._per_second = limit / period
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    @classmethod
    def from_text(cls, text: str, clock: Callable[[], float] = time.monotonic) -> RateLimiter:
        return cls(*parse_rate(text), clock=clock)

    def hit(self, key: str) -> float:
        """Spend one token of `key`: 0.0 when allowed, else the seconds until a token is back."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (float(self.limit), now))
            tokens = min(float(self.limit), tokens + max(0.0, now - at) * self._per_second)
            if tokens >= 1.0 - _EPSILON:
                self._buckets[key] = (max(0.0, tokens - 1.0), now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._per_second
