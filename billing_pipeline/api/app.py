"""The HTTP API's factory: settings, CORS, and the routers listed in ROUTERS.

A router module exposes `router` (an APIRouter) and, when it keeps per-app state, `configure(app)`.
Adding one (a provider's webhooks, say) is one line in ROUTERS. Routers read what they need from
`app.state`: `settings` (billing_pipeline.settings.Settings), `api_config` (api/config.py) and
`clock` (a callable returning an aware UTC datetime; tests replace it to move time).
"""

from __future__ import annotations

import importlib
from datetime import datetime, timezone

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from billing_pipeline.api.config import load_api_config
from billing_pipeline.settings import Settings, load_settings

ROUTERS = (
    "billing_pipeline.api.health",
    "billing_pipeline.api.webhooks_stripe",
    "billing_pipeline.api.webhooks_razorpay",
    "billing_pipeline.api.webhooks_vapi",
    "billing_pipeline.api.events",
)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="billing_pipeline API", version="1")
    app.state.settings = settings or load_settings()
    app.state.api_config = config = load_api_config()
    app.state.clock = utc_now
    if config.cors_origin_list:  # no middleware, no CORS headers: browsers on other origins are refused
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
        )
    for name in ROUTERS:
        module = importlib.import_module(name)
        if hasattr(module, "configure"):
            module.configure(app)
        app.include_router(module.router)
    return app
