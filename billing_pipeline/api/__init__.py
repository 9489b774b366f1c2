"""The HTTP API (FastAPI): usage recording at the edge, health, and later the providers' webhooks."""

from billing_pipeline.api.app import create_app

__all__ = ["create_app"]
