"""Webhook receiving: verify the signature over the raw body with the SDKs' own verifiers, store, answer.

The body is read once as bytes and verified exactly as received (the seed's proxy re-parsed JSON and
broke signatures). Stripe: `Stripe-Signature: t=...,v1=...`, 300 s tolerance, every `v1` tried against
every configured secret (STRIPE_WEBHOOK_SECRET and, during a secret roll, STRIPE_WEBHOOK_SECRET_PREVIOUS).
Razorpay: `X-Razorpay-Signature`, hex HMAC-SHA256 of the raw body; the event id is the
`x-razorpay-event-id` header (a body hash when a proxy dropped it: identical bodies still dedupe).

A rejected request answers 400, is counted in `app.state.webhook_rejections` (a Counter keyed by
(provider, reason)) and logged with its reason, never with the secret, the signature or the body;
nothing of it is stored. A verified event is written to billing.webhook_inbox (a redelivery is a no-op)
and answered 200 at once; processing is asynchronous (inbox.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import razorpay
import stripe
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from razorpay.errors import SignatureVerificationError as RazorpaySignatureError
from sqlalchemy.engine import Engine

from billing_pipeline.payments.inbox import store_event
from billing_pipeline.settings import Settings
from billing_pipeline.warehouse import get_engine

log = logging.getLogger(__name__)

STRIPE_TOLERANCE_SECONDS = 300  # https://docs.stripe.com/webhooks#replay-attacks


class WebhookRejected(Exception):
    """The request is not a genuine provider event; `reason` is a short code safe to log and count."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class WebhookNotConfigured(Exception):
    """No secret to verify with: answered 503 so the provider retries once it is set."""


@dataclass(frozen=True)
class VerifiedEvent:
    provider: str
    event_id: str
    event_type: str
    raw_body: bytes


def _json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except ValueError:
        raise WebhookRejected("bad_body", "the signed body is not JSON") from None
    if not isinstance(body, dict):
        raise WebhookRejected("bad_body", "the signed body is not a JSON object")
    return body


def _field(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise WebhookRejected("bad_body", f"the event has no `{name}`")
    return value


def stripe_secrets(settings: Settings) -> tuple[str, ...]:
    """The endpoint secrets accepted now: the current one, then the previous one during a roll."""
    candidates = (settings.stripe_webhook_secret, settings.stripe_webhook_secret_previous)
    return tuple(s.get_secret_value() for s in candidates if s is not None and s.get_secret_value().strip())


def verify_stripe(
    raw: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int = STRIPE_TOLERANCE_SECONDS
) -> VerifiedEvent:
    if not secrets:
        raise WebhookNotConfigured("STRIPE_WEBHOOK_SECRET is not set")
    if not header:
        raise WebhookRejected("missing_signature", "no Stripe-Signature header")
    reasons = set()
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(raw, header, secret, tolerance)
            break
        except UnicodeDecodeError:
            raise WebhookRejected("bad_body", "the body is not UTF-8") from None
        except stripe.SignatureVerificationError as exc:
            # the SDK checks the signature first, then the age: a stale but genuine request says so
            reasons.add("stale_timestamp" if "tolerance" in str(exc) else "bad_signature")
    else:
        reason = "stale_timestamp" if "stale_timestamp" in reasons else "bad_signature"
        raise WebhookRejected(
            reason,
            "timestamp older than the 300 s tolerance"
            if reason == "stale_timestamp"
            else "no v1 signature matches the body with any configured secret",
        )
    body = _json_object(raw)
    return VerifiedEvent("stripe", _field(body, "id"), _field(body, "type"), raw)


def verify_razorpay(
    raw: bytes, signature: str | None, secret: str | None, event_id: str | None
) -> VerifiedEvent:
    if not secret:
        raise WebhookNotConfigured("RAZORPAY_WEBHOOK_SECRET is not set")
    if not signature:
        raise WebhookRejected("missing_signature", "no X-Razorpay-Signature header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("bad_body", "the body is not UTF-8") from None
    try:
        razorpay.Utility().verify_webhook_signature(text, signature, secret)  # wants a str body
    except RazorpaySignatureError:
        raise WebhookRejected("bad_signature", "X-Razorpay-Signature does not match the body") from None
    body = _json_object(raw)
    return VerifiedEvent(
        "razorpay", event_id or "sha256:" + hashlib.sha256(raw).hexdigest(), _field(body, "event"), raw
    )


# -- HTTP ---------------------------------------------------------------------------------------------
@dataclass
class ReceiverState:
    engine: Engine
    stripe_secrets: tuple[str, ...] = field(repr=False)
    razorpay_secret: str | None = field(repr=False)


def configure(app: FastAPI) -> ReceiverState:
    """Per-app state of the webhook routers (made on the first request when `configure` was not called)."""
    state = getattr(app.state, "payment_webhooks", None)
    if state is None:
        settings: Settings = app.state.settings
        secret = settings.razorpay_webhook_secret
        state = ReceiverState(
            get_engine(settings), stripe_secrets(settings), secret.get_secret_value() if secret else None
        )
        app.state.payment_webhooks = state
        app.state.webhook_rejections = Counter()
    return state


def _store(engine: Engine, event: VerifiedEvent) -> int | None:
    with engine.begin() as conn:
        return store_event(conn, event.provider, event.event_id, event.event_type, event.raw_body)


async def receive(
    request: Request, provider: str, verify: Callable[[ReceiverState, bytes], VerifiedEvent]
) -> JSONResponse:
    state = configure(request.app)
    raw = await request.body()
    try:
        event = verify(state, raw)
    except WebhookRejected as exc:
        counter: Counter = request.app.state.webhook_rejections
        counter[(provider, exc.reason)] += 1
        log.warning(
            "%s webhook rejected (%s): %s; %d rejected so far",
            provider,
            exc.reason,
            exc,
            sum(n for (p, _), n in counter.items() if p == provider),
        )
        return JSONResponse({"error": exc.reason}, status_code=400)
    except WebhookNotConfigured as exc:
        log.error("%s webhook not accepted: %s", provider, exc)
        return JSONResponse({"error": "not_configured"}, status_code=503)
    inbox_id = await run_in_threadpool(_store, state.engine, event)
    return JSONResponse({"received": True, "duplicate": inbox_id is None})
