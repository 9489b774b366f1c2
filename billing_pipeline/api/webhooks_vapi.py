"""`POST /webhooks/vapi`: Vapi's end-of-call reports, verified, stored in billing.webhook_inbox.

Authentication (providers.vapi_api.verify_webhook) with the secret VAPI_WEBHOOK_SECRET, by any of the
ways Vapi can send it: `Authorization: Bearer <secret>`, `X-Vapi-Secret: <secret>`, or, when the Vapi
server's credential uses an HMAC plan with that secret, `x-signature` (hex HMAC-SHA256 of
"{x-timestamp}.{raw body}") with an `x-timestamp` within 300 s. No secret configured: 503, nothing is
accepted unauthenticated.

Answers, at once (processing is asynchronous, from the inbox):
- 200 `{"status": "accepted"}`: stored, keyed `end-of-call-report:<call id>`;
- 200 `{"status": "duplicate"}`: that call's report is already in the inbox (nothing changes);
- 200 `{"status": "ignored", "type": ...}`: a valid server message of another type (status updates,
  transcripts...): nothing to bill, logged;
- 400 for a body that is not JSON or not a well-formed end-of-call report (the reason says why, and
  is logged; the call itself is recovered from GET /call by call_reconciliation);
- 401 bad or missing credentials; 413 body over 10 MiB.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from billing_pipeline.calls.apply import EVENT_TYPE, event_id, parse_end_of_call
from billing_pipeline.payments.inbox import store_event
from billing_pipeline.providers.vapi_api import verify_webhook
from billing_pipeline.settings import Settings
from billing_pipeline.warehouse import get_engine

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 10 * 1024 * 1024
router = APIRouter(tags=["webhooks"])


def _store(settings: Settings, key: str, body: bytes) -> bool:
    with get_engine(settings).begin() as conn:
        return store_event(conn, "vapi", key, EVENT_TYPE, body) is not None


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


@router.post("/webhooks/vapi", summary="Vapi server messages (end-of-call reports are stored)")
async def vapi_webhook(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    if settings.vapi_webhook_secret is None:
        return _error(503, "VAPI_WEBHOOK_SECRET is not configured: Vapi webhooks cannot be verified")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _error(413, f"body over {MAX_BODY_BYTES} bytes")
    secret = settings.vapi_webhook_secret.get_secret_value()
    now = request.app.state.clock().timestamp()
    if not verify_webhook(request.headers, body, secret=secret, hmac_secret=secret, now=now):
        log.warning("Vapi webhook refused: missing or invalid credentials")
        return _error(401, "missing or invalid Vapi credentials (Bearer, X-Vapi-Secret or x-signature)")
    try:
        payload = json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is one
        return _error(400, "the body is not UTF-8 JSON")
    message = payload.get("message") if isinstance(payload, dict) else None
    message_type = message.get("type") if isinstance(message, dict) else None
    if isinstance(message_type, str) and message_type != EVENT_TYPE:
        log.info("Vapi %s message ignored: only end-of-call reports are billed", message_type)
        return JSONResponse({"status": "ignored", "type": message_type})
    try:
        call = parse_end_of_call(payload)
    except ValueError as exc:  # authentic but unusable: logged; call_reconciliation recovers the call
        log.warning("Vapi end-of-call report refused: %s", exc)
        return _error(400, str(exc))
    stored = await run_in_threadpool(_store, settings, event_id(call["id"]), body)
    return JSONResponse({"status": "accepted" if stored else "duplicate", "call_id": call["id"]})
