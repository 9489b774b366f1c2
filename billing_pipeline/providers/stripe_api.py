"""Stripe list syncs through the real `stripe` SDK (16.x `StripeClient`). Plain Python, no Dagster.

Stripe facts used (../shared/PROVIDERS.md): lists are newest first with cursor pagination
(`starting_after`); `created` filters take gte/gt/lte/lt; amounts are integer minor units. Each page
is one call under the project's retry policy (`providers/retry.py`), so a failure on page 7 repeats
page 7, not the listing; the SDK's own retries are off so that attempts never multiply.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import stripe

from billing_pipeline.providers import retry

PAGE_LIMIT = 100  # Stripe's maximum page size

CHARGE_FIELDS = ("id", "amount", "amount_refunded", "currency", "status", "refunded", "captured",
                 "customer", "payment_intent", "balance_transaction", "description", "failure_code",
                 "created", "metadata")
REFUND_FIELDS = ("id", "amount", "currency", "status", "charge", "payment_intent", "balance_transaction",
                 "reason", "created", "metadata")
BALANCE_TRANSACTION_FIELDS = ("id", "amount", "fee", "net", "currency", "type", "reporting_category",
                              "source", "status", "available_on", "created")


def make_client(api_key: str, api_base: str | None = None) -> stripe.StripeClient:
    """A client with the request timeout of `retry.timeout_seconds()` and no retries of its own.

    `api_base` is the server root (e.g. a local fake's "http://127.0.0.1:port"); the SDK adds "/v1/...".
    """
    http_client = stripe.RequestsClient(timeout=retry.timeout_seconds())
    addresses = {"api": api_base.rstrip("/").removesuffix("/v1")} if api_base else None
    return stripe.StripeClient(api_key, base_addresses=addresses or {}, http_client=http_client,
                               max_network_retries=0)


def _rows(service: Any, start: int, end: int, fields: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Every object created in [start, end) as a plain dict of `fields`, all pages followed."""
    params: dict[str, Any] = {"limit": PAGE_LIMIT, "created": {"gte": int(start), "lt": int(end)}}
    action = f"listing {service.__class__.__name__.removesuffix('Service')}"
    while True:
        page = retry.call("stripe", action, lambda: service.list(params=dict(params)))
        for obj in page.data:
            yield _plain(obj, fields)
        if not page.has_more or not page.data:
            return
        params["starting_after"] = page.data[-1].id


def _plain(obj: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    data = obj.to_dict()
    row = {f: data.get(f) for f in fields}
    if "metadata" in row:
        row["metadata"] = dict(row["metadata"] or {})
    for ref in ("customer", "payment_intent", "balance_transaction", "charge", "source"):
        if isinstance(row.get(ref), dict):  # expanded object: keep the id
            row[ref] = row[ref].get("id")
    return row


def list_charges(client: stripe.StripeClient, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.v1.charges, start, end, CHARGE_FIELDS)


def list_refunds(client: stripe.StripeClient, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.v1.refunds, start, end, REFUND_FIELDS)


def list_balance_transactions(client: stripe.StripeClient, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.v1.balance_transactions, start, end, BALANCE_TRANSACTION_FIELDS)
