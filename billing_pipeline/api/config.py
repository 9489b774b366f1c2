"""Settings of the HTTP API, read from the environment (the project-wide ones stay in `settings.py`).

| variable | meaning | default |
| --- | --- | --- |
| `BILLING_API_CORS_ORIGINS` | comma-separated browser origins allowed by CORS; empty = CORS closed | empty |
| `BILLING_API_RATE_LIMIT` | requests per API key, `N/second|minute|hour|day` (e.g. `100/second`) | `100/second` |
| `BILLING_API_KEY_GRACE_SECONDS` | default grace window of `keys rotate` (old key valid that long) | `86400` |
| `BILLING_API_HEALTHZ_TIMEOUT_SECONDS` | how long /healthz waits for each probe | `2.0` |
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing_pipeline.api.ratelimit import parse_rate
from billing_pipeline.settings import SettingsError


def _env(name: str, default, **kwargs):
    return Field(default, validation_alias=AliasChoices(name), **kwargs)


class ApiConfig(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    cors_origins: str = _env("BILLING_API_CORS_ORIGINS", "")
    rate_limit: str = _env("BILLING_API_RATE_LIMIT", "100/second")
    key_grace_seconds: int = _env("BILLING_API_KEY_GRACE_SECONDS", 86400, ge=0)
    healthz_timeout_seconds: float = _env("BILLING_API_HEALTHZ_TIMEOUT_SECONDS", 2.0, gt=0)

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate(cls, value: str) -> str:
        parse_rate(value)  # raises ValueError with the accepted format
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]


def load_api_config() -> ApiConfig:
    """Read the environment now; a bad value raises SettingsError naming the variable."""
    try:
        return ApiConfig()
    except ValidationError as exc:
        raise SettingsError(
            [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        ) from None
