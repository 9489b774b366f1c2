"""`POST /webhooks/razorpay`: a Razorpay event, verified over its raw body, stored in the inbox, answered 200.

400 when `X-Razorpay-Signature` or the body is wrong (counted in `app.state.webhook_rejections`, logged
without secrets, not stored); 503 when no secret is configured. Deduplicated on `x-razorpay-event-id`.
Details in billing_pipeline/payments/webhooks.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from billing_pipeline.payments import webhooks

router = APIRouter(tags=["webhooks"])
configure = webhooks.configure


@router.post(
    "/webhooks/razorpay", summary="Razorpay webhook events (signed; stored, processed asynchronously)"
)
async def razorpay_webhook(request: Request) -> JSONResponse:
    signature = request.headers.get("x-razorpay-signature")
    event_id = request.headers.get("x-razorpay-event-id")
    return await webhooks.receive(
        request,
        "razorpay",
        lambda state, raw: webhooks.verify_razorpay(raw, signature, state.razorpay_secret, event_id),
    )
