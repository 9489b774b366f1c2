"""One typed settings object, read from the environment (names in DESIGN.md).

In `production` the settings refuse to load and list every problem at once. Secrets are
`SecretStr`: they never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# What a value must not look like in production. Matched case-insensitively anywhere in the value.
_PLACEHOLDERS = re.compile(r"change[-_ ]?me|your[-_]|xxx|placeholder|example|dummy|<.*>", re.IGNORECASE)
_TEST_KEYS = re.compile(r"^(sk_test_|rk_test_|pk_test_|rzp_test_|whsec_test)", re.IGNORECASE)
MIN_SECRET_LENGTH = 32
# Razorpay issues key secrets of 24 characters; asking for 32 would make production impossible.
_MIN_LENGTH_OVERRIDES = {"RAZORPAY_KEY_SECRET": 24}

# Each provider: its variables, the secret ones among them. A provider is enabled in production when
# any of its variables is set, and then all of them must be.
_PROVIDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stripe": (("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"), ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET")),
    "razorpay": (
        ("RAZORPAY_KEY_ID", "RAZORPAY_KEY_SECRET", "RAZORPAY_WEBHOOK_SECRET"),
        ("RAZORPAY_KEY_SECRET", "RAZORPAY_WEBHOOK_SECRET"),
    ),
    "vapi": (("VAPI_API_KEY", "VAPI_WEBHOOK_SECRET"), ("VAPI_API_KEY", "VAPI_WEBHOOK_SECRET")),
}


class SettingsError(ValueError):
    """The environment is not fit to run; `problems` lists every reason (no secret values)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "refusing to start: the environment has %d problem(s):\n%s"
            % (len(problems), "\n".join(f"  - {p}" for p in problems))
        )


def _env(name: str, default=None, **kwargs):
    return Field(default, validation_alias=AliasChoices(name), **kwargs)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    env: Literal["development", "production"] = _env("BILLING_ENV", "development")
    home: Path = _env("BILLING_HOME", Path(".billing"))
    database_url: SecretStr | None = _env("BILLING_DATABASE_URL")
    edge_path_override: Path | None = _env("BILLING_EDGE_PATH")

    db_pool_size: int = _env("BILLING_DB_POOL_SIZE", 5, ge=1)
    db_max_overflow: int = _env("BILLING_DB_MAX_OVERFLOW", 5, ge=0)
    db_pool_timeout: float = _env("BILLING_DB_POOL_TIMEOUT", 30.0, gt=0)
    db_pool_recycle: int = _env("BILLING_DB_POOL_RECYCLE", 1800, ge=-1)
    db_pool_pre_ping: bool = _env("BILLING_DB_POOL_PRE_PING", True)

    stripe_api_key: SecretStr | None = _env("STRIPE_API_KEY")
    stripe_webhook_secret: SecretStr | None = _env("STRIPE_WEBHOOK_SECRET")
    # the endpoint secret being rolled out of use: both verify until the roll is over
    stripe_webhook_secret_previous: SecretStr | None = _env("STRIPE_WEBHOOK_SECRET_PREVIOUS")
    stripe_api_base: str | None = _env("STRIPE_API_BASE")
    razorpay_key_id: str | None = _env("RAZORPAY_KEY_ID")
    razorpay_key_secret: SecretStr | None = _env("RAZORPAY_KEY_SECRET")
    razorpay_webhook_secret: SecretStr | None = _env("RAZORPAY_WEBHOOK_SECRET")
    razorpay_api_base: str | None = _env("RAZORPAY_API_BASE")
    vapi_api_key: SecretStr | None = _env("VAPI_API_KEY")
    vapi_webhook_secret: SecretStr | None = _env("VAPI_WEBHOOK_SECRET")
    vapi_api_base: str = _env("VAPI_API_BASE", "https://api.vapi.ai")

    alert_webhook_url: SecretStr | None = _env("BILLING_ALERT_WEBHOOK_URL")

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def edge_path(self) -> Path:
        return (self.edge_path_override or self.home_dir / "edge.sqlite3").expanduser().resolve()

    @property
    def pg_data_dir(self) -> Path:
        return self.home_dir / "pg"

    @property
    def dagster_home(self) -> Path:
        return self.home_dir / "dagster"

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    def value_of(self, env_name: str) -> str | None:
        """The raw value of a setting by its environment name (for validation only)."""
        for name, field in type(self).model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices) and env_name in alias.choices:
                value = getattr(self, name)
                if isinstance(value, SecretStr):
                    return value.get_secret_value()
                return None if value is None else str(value)
        raise KeyError(env_name)


def _secret_problem(name: str, value: str) -> str | None:
    if _PLACEHOLDERS.search(value):
        return f"{name} is a placeholder value; set the real one"
    if _TEST_KEYS.match(value):
        return f"{name} is a test-mode key; production needs a live key"
    minimum = _MIN_LENGTH_OVERRIDES.get(name, MIN_SECRET_LENGTH)
    if len(value) < minimum:
        return f"{name} is too short ({len(value)} characters; at least {minimum} required)"
    return None


def production_problems(settings: Settings) -> list[str]:
    """Every reason the settings are unfit for production, without any secret value."""
    problems: list[str] = []
    url = settings.value_of("BILLING_DATABASE_URL")
    if not url:
        problems.append("BILLING_DATABASE_URL is required in production (the embedded database is for development)")
    else:
        try:
            password = make_url(url).password or ""
        except Exception:
            problems.append("BILLING_DATABASE_URL is not a valid database URL")
        else:
            if _PLACEHOLDERS.search(url):
                problems.append("BILLING_DATABASE_URL contains a placeholder value")
            elif password and len(password) < MIN_SECRET_LENGTH:
                problems.append(
                    f"BILLING_DATABASE_URL password is too short ({len(password)} characters;"
                    f" at least {MIN_SECRET_LENGTH} required)"
                )
    previous = settings.value_of("STRIPE_WEBHOOK_SECRET_PREVIOUS")
    if previous:  # optional, but held to the same rules while a secret roll lasts
        problem = _secret_problem("STRIPE_WEBHOOK_SECRET_PREVIOUS", previous)
        if problem:
            problems.append(problem)
    enabled = 0
    for provider, (names, secrets) in _PROVIDERS.items():
        values = {name: settings.value_of(name) for name in names}
        if not any(values.values()):
            continue
        enabled += 1
        for name, value in values.items():
            if not value:
                problems.append(f"{name} is required when {provider} is configured")
            elif name in secrets:
                problem = _secret_problem(name, value)
                if problem:
                    problems.append(problem)
            elif _PLACEHOLDERS.search(value) or _TEST_KEYS.match(value):
                problems.append(f"{name} is a placeholder or test-mode value")
    if enabled == 0:
        problems.append(
            "no payment provider is configured: set the STRIPE_*, RAZORPAY_* or VAPI_* variables"
        )
    return problems


def load_settings() -> Settings:
    """Read the environment now (no caching: tests and the CLI change it).

    Raises SettingsError listing every problem: malformed values, and in production every rule above.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        # Name the variable and the rule, never the value (it may be a secret).
        raise SettingsError(
            [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        ) from None
    if settings.is_production:
        problems = production_problems(settings)
        if problems:
            raise SettingsError(problems)
    return settings
