"""Stripe list syncs through the real `stripe` SDK (16.x `StripeClient`). Plain Python, no Dagster.

Stripe facts used (../shared/PROVIDERS.md): lists are newest first with cursor pagination
(`starting_after`), which `auto_paging_iter()` follows; `created` filters take gte/gt/lte/lt;
amounts are integer minor units. `max_network_retries` unset means no retries, so it is set here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import stripe

PAGE_LIMIT = 100  # Stripe's maximum page size

CHARGE_FIELDS = ("id", "amount", "amount_refunded", "currency", "status", "refunded", "captured",
                 "customer", "payment_intent", "balance_transaction", "description", "failure_code",
                 "created", "metadata")
REFUND_FIELDS = ("id", "amount", "currency", "status", "charge", "payment_intent", "balance_transaction",
                 "reason", "created", "metadata")
BALANCE_TRANSACTION_FIELDS = ("id", "amount", "fee", "net", "currency", "type", "reporting_category",
                              "source", "status", "available_on", "created")


def make_client(api_key: str, api_base: str | None = None) -> stripe.StripeClient:
    """A client that retries network errors, 409 and 5xx twice (idempotency keys make POSTs safe).

    `api_base` is the server root (e.g. a local fake's "http://127.0.0.1:port"); the SDK adds "/v1/...".
    """
    if api_base:
        base = api_base.rstrip("/").removesuffix("/v1")
        return stripe.StripeClient(api_key, base_addresses={"api": base}, max_network_retries=2)
    return stripe.StripeClient(api_key, max_network_retries=2)


def _rows(service: Any, start: int, end: int, fields: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Every object created in [start, end) as a plain dict of `fields`, all pages followed."""
    page = service.list(params={"limit": PAGE_LIMIT, "created": {"gte": int(start), "lt": int(end)}})
    for obj in page.auto_paging_iter():
        data = obj.to_dict()
        row = {f: data.get(f) for f in fields}
        if "metadata" in row:
            row["metadata"] = dict(row["metadata"] or {})
        for ref in ("customer", "payment_intent", "balance_transaction", "charge", "source"):
            if isinstance(row.get(ref), dict):  # expanded object: keep the id
                row[ref] = row[ref].get("id")
        yield row


def list_charges(client: stripe.StripeClient, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.v1.charges, start, end, CHARGE_FIELDS)


def list_refunds(client: stripe.StripeClient, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.v1.refunds, start, end, REFUND_FIELDS)


def list_balance_transactions(client: stripe.StripeClient, start: int, end: int) -> Iterator[dict[str, Any]]:
    return _rows(client.v1.balance_transactions, start, end, BALANCE_TRANSACTION_FIELDS)
