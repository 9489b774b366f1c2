"""Notification senders: HTTP (a JSON POST), SMTP (smtplib), or a log line when neither is configured.

A sender has `via` (what billing.notification_outbox.sent_via records) and `session()`, a context
manager yielding `send(notification)`, which raises when the message was not accepted. One session
serves a chunk of notifications (one HTTP client, one SMTP connection).
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import httpx

from billing_pipeline.accounts.outbox import Notification
from billing_pipeline.accounts.settings import AccountsSettings

log = logging.getLogger("billing_pipeline.notifications")

Send = Callable[[Notification], None]


class LogSender:
    """No channel configured: the notification is logged (subject and organisation, not the body)."""

    via = "log"

    @contextmanager
    def session(self) -> Iterator[Send]:
        def send(n: Notification) -> None:
            log.info(
                "notification (no sender configured, logged only) %s to %s: %s",
                n.dedupe_key,
                n.organisation_id,
                n.subject,
            )

        yield send


class HttpSender:
    """POSTs each notification as JSON; the receiver drops a repeat by its `Idempotency-Key` header."""

    via = "http"

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url, timeout

    @contextmanager
    def session(self) -> Iterator[Send]:
        with httpx.Client(timeout=self.timeout) as client:

            def send(n: Notification) -> None:
                # errors name no URL: it may carry a token, and they are stored and logged
                try:
                    response = client.post(
                        self.url, json=n.as_json(), headers={"Idempotency-Key": n.dedupe_key}
                    )
                except httpx.HTTPError as exc:
                    raise RuntimeError(f"notification webhook unreachable ({type(exc).__name__})") from None
                if response.is_error:
                    raise RuntimeError(f"notification webhook answered HTTP {response.status_code}")

            yield send


class SmtpSender:
    """Mails each notification to fixed recipients over one connection per chunk.

    URL schemes: `smtp://host[:25]` (plain, a local relay), `smtp+starttls://user:password@host[:587]`,
    `smtps://user:password@host[:465]` (implicit TLS). The Message-ID is derived from the dedupe key, so
    a message sent twice after a crash carries the same id.
    """

    via = "smtp"
    _PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}

    def __init__(self, url: str, sender: str, recipients: list[str], timeout: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme not in self._PORTS or not parts.hostname:
            raise ValueError(
                "BILLING_NOTIFY_SMTP_URL must look like smtp://host:25, "
                "smtp+starttls://user:password@host:587 or smtps://user:password@host:465"
            )
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or self._PORTS[parts.scheme]
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender, self.recipients, self.timeout = sender, recipients, timeout

    def message(self, n: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = f"[{n.organisation_id}] {n.subject}"
        domain = self.sender.rpartition("@")[2] or "billing-pipeline"
        msg["Message-ID"] = f"<{hashlib.sha256(n.dedupe_key.encode()).hexdigest()[:32]}@{domain}>"
        msg["X-Billing-Notification"] = n.dedupe_key
        msg.set_content(n.body)
        return msg

    @contextmanager
    def session(self) -> Iterator[Send]:
        if self.scheme == "smtps":
            server = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            server = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.scheme == "smtp+starttls":
                server.starttls(context=ssl.create_default_context())
            if self.user:
                server.login(self.user, self.password or "")

            def send(n: Notification) -> None:
                server.send_message(self.message(n))

            yield send
        finally:
            try:
                server.quit()
            except (smtplib.SMTPException, OSError):
                server.close()


def sender_from_settings(settings: AccountsSettings):
    if settings.notify_webhook_url:
        return HttpSender(settings.notify_webhook_url.get_secret_value())
    if settings.notify_smtp_url:
        return SmtpSender(
            settings.notify_smtp_url.get_secret_value(), settings.notify_email_from, settings.recipients
        )
    return LogSender()
