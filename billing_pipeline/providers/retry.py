"""One retry policy for every provider call (Stripe, Razorpay, Vapi), with tenacity.

A provider that is down answers 5xx, 429 (with Retry-After) or nothing at all (a timeout). Such a
call is repeated a bounded number of times with exponential backoff and jitter; a Retry-After header
is honoured (capped). When the attempts run out, `ProviderUnavailable` names the provider, what was
being done and the last error; the callers add their window and fail the run. Everything else a
provider answers (a decline, a bad request) is final and raised at once.

This is the only retry layer: the Stripe SDK's own retries are off (`max_network_retries=0` in
`stripe_api.make_client`) and the Razorpay SDK's are off by default, so attempts never multiply.
Every money-moving POST carries an idempotency key, so repeating it is safe.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
import requests
import stripe
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

T = TypeVar("T")

# Defaults; the environment can change them (BILLING_PROVIDER_*), read at each call.
MAX_ATTEMPTS = 4
BACKOFF_SECONDS = 0.5  # the first wait; doubling, with jitter
BACKOFF_MAX_SECONDS = 30.0
RETRY_AFTER_MAX_SECONDS = 120.0
TIMEOUT_SECONDS = 30.0


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def max_attempts() -> int:
    return int(_env_float("BILLING_PROVIDER_MAX_ATTEMPTS", MAX_ATTEMPTS))


def timeout_seconds() -> float:
    """How long one provider request may take before it counts as failed (and is retried)."""
    return _env_float("BILLING_PROVIDER_TIMEOUT_SECONDS", TIMEOUT_SECONDS)


class ProviderHTTPError(RuntimeError):
    """An HTTP error status from a provider whose SDK does not keep it (Razorpay)."""

    def __init__(self, provider: str, status: int, retry_after: str | None, message: str) -> None:
        super().__init__(f"{provider} answered HTTP {status}: {message[:300]}")
        self.status, self.retry_after = status, retry_after


class ProviderUnavailable(RuntimeError):
    """A provider did not answer usefully within the attempts allowed."""

    def __init__(self, provider: str, action: str, attempts: int, cause: BaseException) -> None:
        super().__init__(
            f"{provider} unavailable: {action} failed {attempts} time(s), last with {type(cause).__name__}: "
            f"{str(cause)[:300]}"
        )
        self.provider, self.action, self.attempts = provider, action, attempts


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, stripe.StripeError):
        return exc.http_status
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    return getattr(exc, "status", None) or getattr(exc, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    """Worth repeating: the provider is down, overloaded or slow, not saying no."""
    if isinstance(exc, (stripe.APIConnectionError, requests.ConnectionError, requests.Timeout, httpx.TransportError)):
        return True
    status = _status(exc)
    return status is not None and (status == 429 or status >= 500)


def _retry_after(exc: BaseException) -> float | None:
    """Seconds a 429/503 asked us to wait (delta-seconds or an HTTP date), if it said."""
    if isinstance(exc, stripe.StripeError):
        value = (exc.headers or {}).get("retry-after") or (exc.headers or {}).get("Retry-After")
    elif isinstance(exc, httpx.HTTPStatusError):
        value = exc.response.headers.get("retry-after")
    else:
        value = getattr(exc, "retry_after", None)
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())


class wait_retry_after_or_backoff:  # noqa: N801 - a tenacity wait strategy, named like tenacity's
    """Retry-After when the provider gave one (capped), exponential backoff with jitter otherwise."""

    def __init__(self, initial: float) -> None:
        self._backoff = wait_exponential_jitter(initial=initial, max=BACKOFF_MAX_SECONDS)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = _retry_after(exc) if exc else None
        if asked is not None:
            return min(asked, RETRY_AFTER_MAX_SECONDS)
        return self._backoff(state)


def retrying(attempts: int | None = None, initial_backoff: float | None = None) -> Retrying:
    return Retrying(
        stop=stop_after_attempt(attempts or max_attempts()),
        wait=wait_retry_after_or_backoff(
            initial_backoff or _env_float("BILLING_PROVIDER_BACKOFF_SECONDS", BACKOFF_SECONDS)
        ),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )


def call(provider: str, action: str, fn: Callable[[], T]) -> T:
    """`fn()` under the retry policy; `ProviderUnavailable` when a transient failure outlasts it."""
    policy = retrying()
    try:
        return policy(fn)
    except Exception as exc:
        if is_transient(exc):
            raise ProviderUnavailable(provider, action, policy.statistics.get("attempt_number", 1), exc) from exc
        raise
