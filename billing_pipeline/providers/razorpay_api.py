"""Razorpay list syncs through the real `razorpay` SDK (2.x `razorpay.Client`). Plain Python, no Dagster.

Razorpay facts used (../shared/PROVIDERS.md): `from`/`to` are unix seconds and both inclusive; paging is
by offset only (`count` at most 100, `skip`), newest first, so an object created while we page shifts
the offsets and can show up twice: page until a short page and dedupe by id. Empty `notes` come back
as `[]`; they are normalized to `{}`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import razorpay
import requests

from billing_pipeline.providers import retry

PAGE_COUNT = 100  # Razorpay's maximum `count`

PAYMENT_FIELDS = ("id", "amount", "currency", "status", "order_id", "customer_id", "method", "amount_refunded",
                  "refund_status", "captured", "fee", "tax", "email", "contact", "description", "error_code",
                  "notes", "created_at")
ORDER_FIELDS = ("id", "amount", "amount_paid", "amount_due", "currency", "receipt", "status", "attempts",
                "notes", "created_at")
REFUND_FIELDS = ("id", "amount", "currency", "payment_id", "status", "notes", "created_at")
SETTLEMENT_FIELDS = ("id", "amount", "fees", "tax", "utr", "status", "created_at")


class _Session(requests.Session):
    """What the SDK's requests go through: a timeout on every request (requests has no default: a
    provider that stops answering would hang the run), and 429/5xx raised with their status and
    Retry-After (the SDK turns every error into BadRequestError/ServerError and drops both)."""

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", retry.timeout_seconds())
        response = super().request(method, url, **kwargs)
        if response.status_code == 429 or response.status_code >= 500:
            raise retry.ProviderHTTPError(
                "razorpay", response.status_code, response.headers.get("Retry-After"), response.text
            )
        return response


def make_client(key_id: str, key_secret: str, api_base: str | None = None) -> razorpay.Client:
    """`api_base` is the server root (e.g. "http://127.0.0.1:port"): the SDK appends "/v1/..." itself."""
    if api_base:
        return razorpay.Client(session=_Session(), auth=(key_id, key_secret),
                               base_url=api_base.rstrip("/").removesuffix("/v1"))
    return razorpay.Client(session=_Session(), auth=(key_id, key_secret))


def _rows(fetch: Callable[[dict], dict], start: int, end: int,
          fields: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Every object with start <= created_at < end, once, as a plain dict of `fields`.

    The window is closed-open like the Stripe syncs; Razorpay's `to` is inclusive, so it is sent as end - 1.
    """
    if end <= start:
        return
    seen: set[str] = set()
    skip = 0
    action = f"listing {getattr(fetch, '__self__', fetch).__class__.__name__.lower()}s"
    while True:
        params = {"from": int(start), "to": int(end) - 1, "count": PAGE_COUNT, "skip": skip}
        page = retry.call("razorpay", action, lambda: fetch(params))
        items = page.get("items", [])
        for item in items:
            if item["id"] in seen or not start <= item["created_at"] < end:
                continue
            seen.add(item["id"])
            row = {f: item.get(f) for f in fields}
            if "notes" in row:
                row["notes"] = dict(row["notes"] or {})
            yield row
        if len(items) < PAGE_COUNT:
            return
        skip += len(items)


def list_payments(client: razorpay.Client, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.payment.all, start, end, PAYMENT_FIELDS)


def list_orders(client: razorpay.Client, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.order.all, start, end, ORDER_FIELDS)


def list_refunds(client: razorpay.Client, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.refund.all, start, end, REFUND_FIELDS)


def list_settlements(client: razorpay.Client, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.settlement.all, start, end, SETTLEMENT_FIELDS)
