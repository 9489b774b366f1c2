"""Settings of accounts and operations, read from the environment (the project-wide ones are in
billing_pipeline/settings.py).

| variable | meaning | default |
| --- | --- | --- |
| `BILLING_NOTIFY_WEBHOOK_URL` | notifications POSTed there as JSON, with an `Idempotency-Key` | unset |
| `BILLING_NOTIFY_SMTP_URL` | or mailed: `smtp://h:25`, `smtp+starttls://u:p@h:587`, `smtps://…` | unset |
| `BILLING_NOTIFY_EMAIL_FROM` | the mail's From | `billing@localhost` |
| `BILLING_NOTIFY_EMAIL_TO` | the mail's recipients, comma-separated (billing team, CRM inbox) | unset |
| `BILLING_DUNNING_RETRY_DAYS` | days after the failed payment on which it is retried | `1,3,5,7` |
| `BILLING_INVOICING_GRACE_HOURS` | hours after midnight UTC on the 1st before a month is invoiced | `6` |
| `BILLING_RECON_ALERT_MAX_FINDINGS` | a reconciliation day (per source) with more findings alerts | `0` |
| `BILLING_RECON_ALERT_MAX_AMOUNT_MINOR` | ... or with amounts further apart (minor units/currency) | `0` |

Neither notification URL set: each notification is logged and marked sent `log`. Both set is refused.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing_pipeline.settings import SettingsError


def _env(name: str, default, **kwargs):
    return Field(default, validation_alias=AliasChoices(name), **kwargs)


class AccountsSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    notify_webhook_url: SecretStr | None = _env("BILLING_NOTIFY_WEBHOOK_URL", None)
    notify_smtp_url: SecretStr | None = _env("BILLING_NOTIFY_SMTP_URL", None)
    notify_email_from: str = _env("BILLING_NOTIFY_EMAIL_FROM", "billing@localhost")
    notify_email_to: str = _env("BILLING_NOTIFY_EMAIL_TO", "")
    dunning_retry_days: str = _env("BILLING_DUNNING_RETRY_DAYS", "1,3,5,7")
    invoicing_grace_hours: int = _env("BILLING_INVOICING_GRACE_HOURS", 6, ge=0, le=27 * 24 - 1)
    recon_alert_max_findings: int = _env("BILLING_RECON_ALERT_MAX_FINDINGS", 0, ge=0)
    recon_alert_max_amount_minor: int = _env("BILLING_RECON_ALERT_MAX_AMOUNT_MINOR", 0, ge=0)

    @field_validator("dunning_retry_days")
    @classmethod
    def _days(cls, value: str) -> str:
        try:
            days = [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError("expected whole days separated by commas, e.g. 1,3,5,7") from None
        if not days or days != sorted(set(days)) or days[0] < 0:
            raise ValueError("expected increasing, distinct, non-negative days, e.g. 1,3,5,7")
        return value

    @model_validator(mode="after")
    def _one_sender(self):
        if self.notify_webhook_url and self.notify_smtp_url:
            raise ValueError("set BILLING_NOTIFY_WEBHOOK_URL or BILLING_NOTIFY_SMTP_URL, not both")
        if self.notify_smtp_url and not self.recipients:
            raise ValueError("BILLING_NOTIFY_SMTP_URL is set but BILLING_NOTIFY_EMAIL_TO names no recipient")
        return self

    @property
    def retry_days(self) -> list[int]:
        return [int(part) for part in self.dunning_retry_days.split(",")]

    @property
    def recipients(self) -> list[str]:
        return [r.strip() for r in self.notify_email_to.split(",") if r.strip()]


def load_accounts_settings() -> AccountsSettings:
    """Read the environment now; a bad value raises SettingsError naming the variable, never a secret."""
    try:
        return AccountsSettings()
    except ValidationError as exc:
        raise SettingsError(
            [
                f"{'.'.join(str(p) for p in err['loc']) or 'accounts settings'}: {err['msg']}"
                for err in exc.errors()
            ]
        ) from None
