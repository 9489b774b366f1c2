"""Alerts: a Slack-compatible JSON POST to BILLING_ALERT_WEBHOOK_URL, or a log line when it is unset."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import httpx

log = logging.getLogger("billing_pipeline.alerts")


def send_alert(url: str | None, title: str, fields: Mapping[str, object] | None = None) -> bool:
    """Post the alert; returns True when delivered. Never raises: an alert must not fail a run."""
    lines = [f"*{title}*"] + [f"{k}: {v}" for k, v in (fields or {}).items()]
    text = "\n".join(lines)
    if not url:
        log.warning("ALERT (BILLING_ALERT_WEBHOOK_URL unset, logged only): %s", text.replace("\n", " | "))
        return False
    try:
        response = httpx.post(url, json={"text": text}, timeout=10)
        response.raise_for_status()
        return True
    except httpx.HTTPError as exc:
        log.error("alert delivery failed (%s): %s", type(exc).__name__, title)
        return False
