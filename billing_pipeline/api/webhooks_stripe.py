"""`POST /webhooks/stripe`: a Stripe event, verified over its raw body, stored in the inbox, answered 200.

400 when the signature, its age (300 s) or the body is wrong (counted in
`app.state.webhook_rejections`, logged without secrets, not stored); 503 when no secret is configured.
Details in billing_pipeline/payments/webhooks.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from billing_pipeline.payments import webhooks

router = APIRouter(tags=["webhooks"])
configure = webhooks.configure


@router.post("/webhooks/stripe", summary="Stripe webhook events (signed; stored, processed asynchronously)")
async def stripe_webhook(request: Request) -> JSONResponse:
    header = request.headers.get("stripe-signature")
    return await webhooks.receive(
        request, "stripe", lambda state, raw: webhooks.verify_stripe(raw, header, state.stripe_secrets)
    )
