"""The demo's providers: the project's FAKE Stripe, Razorpay and Vapi servers and the webhook API.

All four are served on loopback ports for the duration of the demo, and the settings point at them
(`*_API_BASE`, keys and webhook secrets) in this process only. Nothing here is used outside the demo
and the tests: with real keys configured, the product talks to the real providers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from billing_pipeline.fakes import razorpay_fake, stripe_fake, vapi_fake
from billing_pipeline.fakes.server import serve_in_thread

# Test-mode looking values: they only open the local fakes.
STRIPE_KEY = "sk_test_demo_fake_key"
RAZORPAY_KEY_ID, RAZORPAY_KEY_SECRET = "rzp_test_demofakekey", "demo_fake_key_secret"
VAPI_KEY = "vapi-demo-fake-key"
WEBHOOK_SECRETS = {
    "STRIPE_WEBHOOK_SECRET": "whsec_demo_fake_endpoint_secret",
    "RAZORPAY_WEBHOOK_SECRET": "demo_fake_razorpay_webhook_secret",
    "VAPI_WEBHOOK_SECRET": "demo_fake_vapi_webhook_secret",
}


@dataclass
class DemoProviders:
    stripe: stripe_fake.FakeStripeState
    razorpay: razorpay_fake.FakeRazorpayState
    vapi: vapi_fake.FakeVapiState
    api_url: str  # our FastAPI app: /webhooks/stripe, /webhooks/razorpay, /webhooks/vapi

    @property
    def vapi_webhook_secret(self) -> str:
        return WEBHOOK_SECRETS["VAPI_WEBHOOK_SECRET"]


@contextmanager
def fake_providers() -> Iterator[DemoProviders]:
    """Serve the fakes and the webhook API; the environment points at them until the block exits."""
    stripe_state = stripe_fake.FakeStripeState(api_key=STRIPE_KEY)
    razorpay_state = razorpay_fake.FakeRazorpayState(RAZORPAY_KEY_ID, RAZORPAY_KEY_SECRET)
    vapi_state = vapi_fake.FakeVapiState()
    saved = dict(os.environ)
    with ExitStack() as stack:
        stripe_url = stack.enter_context(serve_in_thread(stripe_fake.create_app(stripe_state)))
        razorpay_url = stack.enter_context(serve_in_thread(razorpay_fake.create_app(razorpay_state)))
        vapi_url = stack.enter_context(serve_in_thread(vapi_fake.create_app(vapi_state, VAPI_KEY)))
        os.environ.update(
            {
                "STRIPE_API_KEY": STRIPE_KEY,
                "STRIPE_API_BASE": stripe_url,
                "RAZORPAY_KEY_ID": RAZORPAY_KEY_ID,
                "RAZORPAY_KEY_SECRET": RAZORPAY_KEY_SECRET,
                "RAZORPAY_API_BASE": razorpay_url,
                "VAPI_API_KEY": VAPI_KEY,
                "VAPI_API_BASE": vapi_url,
                **WEBHOOK_SECRETS,
            }
        )
        os.environ.pop("STRIPE_WEBHOOK_SECRET_PREVIOUS", None)
        try:
            from billing_pipeline.api.app import create_app

            api_url = stack.enter_context(serve_in_thread(create_app()))
            yield DemoProviders(stripe_state, razorpay_state, vapi_state, api_url)
        finally:
            os.environ.clear()
            os.environ.update(saved)
