"""FAKE Stripe API server: a local stand-in for tests and the demo, never for real money.

It speaks enough of Stripe's v1 wire format for the real `stripe` SDK (16.x, `StripeClient` with
`base_addresses={"api": url}`) to accept it: Bearer auth, form-encoded list params
(`created[gte]=...`, `limit`, `starting_after`, `ending_before`), cursor pagination newest first,
Stripe's error shapes and status codes, `Idempotency-Key` replay on POST, and signed webhooks
(`Stripe-Signature: t=...,v1=...`, https://docs.stripe.com/webhooks#verify-manually).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

API_VERSION = "2026-10-28.endive"  # what stripe 16.1 sends as Stripe-Version

# collection path -> (id prefix, "object" value, equality filters the list endpoint accepts)
KINDS: dict[str, tuple[str, str, frozenset[str]]] = {
    "charges": ("ch", "charge", frozenset({"customer", "payment_intent"})),
    "refunds": ("re", "refund", frozenset({"charge", "payment_intent"})),
    "balance_transactions": ("txn", "balance_transaction", frozenset({"type", "source", "currency"})),
    "payment_intents": ("pi", "payment_intent", frozenset({"customer"})),
    "events": ("evt", "event", frozenset({"type"})),
}
_CREATED_OPS = {"gte": int.__ge__, "gt": int.__gt__, "lte": int.__le__, "lt": int.__lt__}
_PI_CREATE_PARAMS = {
    "amount", "currency", "customer", "description", "confirm", "payment_method", "off_session",
    "receipt_email", "statement_descriptor", "setup_future_usage", "capture_method",
}
_PI_CREATE_PREFIXES = ("metadata[", "expand[", "payment_method_types[", "automatic_payment_methods[")
# Stripe's test PaymentMethods that decline (https://docs.stripe.com/testing#declined-payments)
DECLINING_PAYMENT_METHODS = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_visa_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
}
_REFUND_CREATE_PARAMS = {"charge", "payment_intent", "amount", "reason"}


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake received it (params: query string, or form body for POST)."""

    method: str
    path: str
    params: dict[str, str]
    idempotency_key: str | None
    auth_scheme: str | None = None  # "Bearer", "Basic" or None; the key itself is not kept


class StripeApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", **extra: Any):
        super().__init__(message)
        self.status, self.body = status, {"error": {"type": type_, "message": message, **extra}}


class FakeStripeState:
    """In-memory, thread-safe store behind the fake. Tests and the demo seeder fill it directly."""

    def __init__(self, api_key: str = "sk_test_fake_key") -> None:
        self.api_keys = {api_key}
        self.declined_customers: set[str] = set()  # confirming a PaymentIntent for these -> card_error
        self.requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._objects: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
        self._idempotency: dict[str, tuple[str, list, int, dict]] = {}
        self._seq = 0
        self._fail_next: list[int] = []

    # -- helpers -----------------------------------------------------------------------------------
    def _new_id(self, kind: str) -> str:
        self._seq += 1
        return f"{KINDS[kind][0]}_fake{self._seq:020d}"

    def _put(self, kind: str, obj: dict) -> dict:
        with self._lock:
            obj["id"] = obj.get("id") or self._new_id(kind)
            if obj["id"] in self._objects[kind]:
                raise ValueError(f"duplicate id {obj['id']}")
            self._objects[kind][obj["id"]] = obj
            return copy.deepcopy(obj)

    def record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """The next `count` authenticated API requests answer `status` (Stripe's SDK retries 5xx/409)."""
        with self._lock:
            self._fail_next.extend([status] * count)

    def _pop_failure(self) -> int | None:
        with self._lock:
            return self._fail_next.pop(0) if self._fail_next else None

    def get(self, kind: str, obj_id: str) -> dict | None:
        with self._lock:
            obj = self._objects[kind].get(obj_id)
            return copy.deepcopy(obj) if obj else None

    def update(self, kind: str, obj_id: str, **fields: Any) -> dict:
        """Change a stored object in place (e.g. a late status change), as the provider would."""
        with self._lock:
            self._objects[kind][obj_id].update(fields)
            return copy.deepcopy(self._objects[kind][obj_id])

    def all(self, kind: str) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(o) for o in self._objects[kind].values()]

    # -- seeding -----------------------------------------------------------------------------------
    def add_charge(self, amount: int, currency: str = "usd", *, customer: str | None = None,
                   status: str = "succeeded", created: int | None = None, metadata: dict | None = None,
                   payment_intent: str | None = None, id: str | None = None, description: str | None = None,
                   failure_code: str | None = None, fee: int | None = None) -> dict:
        """A charge; with `fee`, also its balance transaction (amount, fee, net) linked to it."""
        ok = status == "succeeded"
        charge = self._put("charges", {
            "id": id, "object": "charge", "amount": int(amount), "amount_captured": int(amount) if ok else 0,
            "amount_refunded": 0, "balance_transaction": None, "captured": ok,
            "created": int(created if created is not None else time.time()), "currency": currency.lower(),
            "customer": customer, "description": description, "failure_code": failure_code,
            "failure_message": "Your card was declined." if failure_code else None, "livemode": False,
            "metadata": dict(metadata or {}), "paid": ok, "payment_intent": payment_intent,
            "refunded": False, "status": status,
        })
        if fee is not None:
            self.add_balance_transaction(amount, fee=fee, currency=currency, source=charge["id"],
                                         created=charge["created"])
            charge = self.get("charges", charge["id"])
        return charge

    def add_refund(self, charge: str, amount: int | None = None, *, status: str = "succeeded",
                   created: int | None = None, metadata: dict | None = None, reason: str | None = None,
                   currency: str = "usd", id: str | None = None) -> dict:
        """A refund of `charge` (default: what is left of it); updates the charge's amount_refunded."""
        with self._lock:
            ch = self._objects["charges"].get(charge)
            if amount is None:
                if ch is None:
                    raise KeyError(f"unknown charge {charge}: pass amount")
                amount = ch["amount"] - ch["amount_refunded"]
            refund = self._put("refunds", {
                "id": id, "object": "refund", "amount": int(amount), "balance_transaction": None,
                "charge": charge, "created": int(created if created is not None else time.time()),
                "currency": ch["currency"] if ch else currency.lower(), "metadata": dict(metadata or {}),
                "payment_intent": ch["payment_intent"] if ch else None, "reason": reason, "status": status,
            })
            if ch is not None and status == "succeeded":
                ch["amount_refunded"] += int(amount)
                ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
            return refund

    def add_balance_transaction(self, amount: int, *, fee: int = 0, currency: str = "usd",
                                type: str = "charge", source: str | None = None, created: int | None = None,
                                status: str = "available", id: str | None = None,
                                description: str | None = None) -> dict:
        """A balance transaction; a `source` naming a known charge or refund gets linked back."""
        created = int(created if created is not None else time.time())
        fee_details = [{"amount": int(fee), "currency": currency.lower(), "type": "stripe_fee"}]
        with self._lock:
            txn = self._put("balance_transactions", {
                "id": id, "object": "balance_transaction", "amount": int(amount),
                "available_on": created + 2 * 86400, "created": created, "currency": currency.lower(),
                "description": description, "fee": int(fee),
                "fee_details": fee_details if fee else [],
                "net": int(amount) - int(fee), "reporting_category": type, "source": source, "status": status,
                "type": type,
            })
            for kind in ("charges", "refunds"):
                if source in self._objects[kind]:
                    self._objects[kind][source]["balance_transaction"] = txn["id"]
            return txn

    def add_payment_intent(self, amount: int, currency: str = "usd", *, customer: str | None = None,
                           status: str = "succeeded", created: int | None = None,
                           metadata: dict | None = None, latest_charge: str | None = None,
                           id: str | None = None, description: str | None = None) -> dict:
        return self._put("payment_intents", {
            "id": id, "object": "payment_intent", "amount": int(amount),
            "amount_received": int(amount) if status == "succeeded" else 0, "capture_method": "automatic",
            "confirmation_method": "automatic",
            "created": int(created if created is not None else time.time()),
            "currency": currency.lower(), "customer": customer, "description": description,
            "last_payment_error": None, "latest_charge": latest_charge, "livemode": False,
            "metadata": dict(metadata or {}), "payment_method": None, "status": status,
        })

    def add_event(self, type: str, data_object: dict, *, created: int | None = None, id: str | None = None,
                  previous_attributes: dict | None = None) -> dict:
        """A v1 event wrapping `data_object`; the same dict is what `deliver_webhook` posts."""
        data: dict[str, Any] = {"object": copy.deepcopy(data_object)}
        if previous_attributes is not None:
            data["previous_attributes"] = previous_attributes
        return self._put("events", {
            "id": id, "object": "event", "api_version": API_VERSION,
            "created": int(created if created is not None else time.time()), "data": data, "livemode": False,
            "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "type": type,
        })

    # -- API operations ----------------------------------------------------------------------------
    def list_page(self, kind: str, params: dict[str, str]) -> dict:
        prefix, obj_name, filters = KINDS[kind]
        allowed = {"limit", "starting_after", "ending_before", "created"} | filters
        created_ops = []
        for key, value in params.items():
            if key.startswith("created[") and key.endswith("]") and key[8:-1] in _CREATED_OPS:
                created_ops.append((_CREATED_OPS[key[8:-1]], _int_param(key, value)))
            elif key not in allowed and not key.startswith("expand["):
                raise StripeApiError(400, f"Received unknown parameter: {key}", param=key)
        if "created" in params:
            created_ops.append((int.__eq__, _int_param("created", params["created"])))
        limit = _int_param("limit", params.get("limit", "10"))
        if not 1 <= limit <= 100:
            raise StripeApiError(400, "This value must be greater than or equal to 1 and less than or "
                                      "equal to 100.", param="limit")
        after, before = params.get("starting_after"), params.get("ending_before")
        if after and before:
            raise StripeApiError(400, "You may only specify one of these parameters: ending_before, "
                                      "starting_after.", param="starting_after")
        with self._lock:
            objs = self._objects[kind]
            cursor_id = after or before
            if cursor_id and cursor_id not in objs:
                raise StripeApiError(400, f"No such {obj_name}: '{cursor_id}'", code="resource_missing",
                                     param="starting_after" if after else "ending_before")
            rows = sorted(
                (o for o in objs.values()
                 if all(op(o["created"], v) for op, v in created_ops)
                 and all(str(o.get(f)) == params[f] for f in filters if f in params)),
                key=_order_key, reverse=True,
            )
            if after:
                cut = _order_key(objs[after])
                rows = [o for o in rows if _order_key(o) < cut]
                page, has_more = rows[:limit], len(rows) > limit
            elif before:
                cut = _order_key(objs[before])
                rows = [o for o in rows if _order_key(o) > cut]
                page, has_more = rows[-limit:], len(rows) > limit
            else:
                page, has_more = rows[:limit], len(rows) > limit
            return {"object": "list", "data": copy.deepcopy(page), "has_more": has_more, "url": f"/v1/{kind}"}

    def idempotent(self, path: str, params: dict[str, str], idempotency_key: str | None,
                   create) -> tuple[int, dict, bool]:
        """A POST under Stripe's idempotency layer -> (status, body, replayed): the same key with the same
        endpoint and parameters replays the first answer (errors included) and never creates a second
        object; the same key with another endpoint or other parameters is an `idempotency_error` (400).
        A request that fails validation is not saved (https://docs.stripe.com/api/idempotent_requests)."""
        signature = sorted(params.items())
        with self._lock:
            if idempotency_key and idempotency_key in self._idempotency:
                first_path, first_params, status, body = self._idempotency[idempotency_key]
                if (first_path, first_params) != (path, signature):
                    raise StripeApiError(400, "Keys for idempotent requests can only be used with the same "
                                              "parameters they were first used with. Try using a key other "
                                              f"than '{idempotency_key}' if you meant to execute a different "
                                              "request.", type_="idempotency_error")
                return status, copy.deepcopy(body), True
            try:
                status, body = 200, create(params)
            except StripeApiError as exc:
                status, body = exc.status, exc.body
                if exc.body["error"]["type"] == "invalid_request_error":
                    return status, body, False
            if idempotency_key:
                self._idempotency[idempotency_key] = (path, signature, status, copy.deepcopy(body))
            return status, body, False

    def create_payment_intent(self, params: dict[str, str],
                              idempotency_key: str | None) -> tuple[int, dict, bool]:
        """POST /v1/payment_intents -> (status, body, replayed)."""
        return self.idempotent("/v1/payment_intents", params, idempotency_key, self._create_payment_intent)

    def create_refund(self, params: dict[str, str], idempotency_key: str | None) -> tuple[int, dict, bool]:
        """POST /v1/refunds -> (status, body, replayed)."""
        return self.idempotent("/v1/refunds", params, idempotency_key, self._create_refund)

    def _create_refund(self, params: dict[str, str]) -> dict:
        for key in params:
            if key not in _REFUND_CREATE_PARAMS and not key.startswith(("metadata[", "expand[")):
                raise StripeApiError(400, f"Received unknown parameter: {key}", param=key)
        charge_id = params.get("charge")
        if not charge_id and params.get("payment_intent"):
            intent = self._objects["payment_intents"].get(params["payment_intent"])
            if intent is None:
                raise StripeApiError(400, f"No such payment_intent: '{params['payment_intent']}'",
                                     code="resource_missing", param="payment_intent")
            charge_id = intent["latest_charge"]
        if not charge_id:
            raise StripeApiError(400, "One of the following params should be provided for this request: "
                                      "payment_intent or charge.", code="parameter_missing")
        charge = self._objects["charges"].get(charge_id)
        if charge is None:
            raise StripeApiError(400, f"No such charge: '{charge_id}'", code="resource_missing",
                                 param="charge")
        left = charge["amount_captured"] - charge["amount_refunded"]
        amount = _int_param("amount", params["amount"]) if "amount" in params else left
        if amount > left:
            raise StripeApiError(400, f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                                      f"({left})", code="amount_too_large", param="amount")
        if amount < 1:
            raise StripeApiError(400, "This value must be greater than or equal to 1.", param="amount")
        metadata = {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")}
        refund = self.add_refund(charge_id, amount, metadata=metadata, reason=params.get("reason"))
        self.add_event("charge.refunded", self.get("charges", charge_id), created=refund["created"])
        self.add_event("refund.created", refund, created=refund["created"])
        return refund

    def _create_payment_intent(self, params: dict[str, str]) -> dict:
        for key in params:
            if key not in _PI_CREATE_PARAMS and not key.startswith(_PI_CREATE_PREFIXES):
                raise StripeApiError(400, f"Received unknown parameter: {key}", param=key)
        for key in ("amount", "currency"):
            if key not in params:
                raise StripeApiError(400, f"Missing required param: {key}.", code="parameter_missing",
                                     param=key)
        amount = _int_param("amount", params["amount"])
        if amount < 1:
            raise StripeApiError(400, "This value must be greater than or equal to 1.", param="amount")
        metadata = {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")}
        customer, currency = params.get("customer"), params["currency"]
        confirm = params.get("confirm") == "true"
        status = "requires_payment_method"
        decline_code = DECLINING_PAYMENT_METHODS.get(params.get("payment_method", ""))
        if customer in self.declined_customers:
            decline_code = "insufficient_funds"
        if confirm:
            status = "requires_payment_method" if decline_code else "succeeded"
        pi = self.add_payment_intent(amount, currency, customer=customer, status=status, metadata=metadata,
                                     description=params.get("description"))
        self.add_event("payment_intent.created", pi, created=pi["created"])
        if not confirm:
            return pi
        ok = status == "succeeded"
        charge = self.add_charge(amount, currency, customer=customer, metadata=metadata,
                                 payment_intent=pi["id"], status="succeeded" if ok else "failed",
                                 failure_code=None if ok else "card_declined", created=pi["created"])
        stored = self._objects["payment_intents"][pi["id"]]
        stored["latest_charge"] = charge["id"]
        if not ok:
            stored["last_payment_error"] = {"type": "card_error", "code": "card_declined",
                                            "decline_code": decline_code, "charge": charge["id"],
                                            "message": _DECLINE_MESSAGES[decline_code]}
        pi = copy.deepcopy(stored)
        self.add_event(f"charge.{charge['status']}", charge, created=pi["created"])
        self.add_event("payment_intent.succeeded" if ok else "payment_intent.payment_failed", pi,
                       created=pi["created"])
        if not ok:
            raise StripeApiError(402, _DECLINE_MESSAGES[decline_code], type_="card_error",
                                 code="card_declined", decline_code=decline_code, charge=charge["id"],
                                 payment_intent=pi)
        return pi


_DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
}


def _order_key(obj: dict) -> tuple[int, str]:
    return obj["created"], obj["id"]


def _int_param(name: str, value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeApiError(400, f"Invalid integer: {value}", param=name) from None


def create_app(state: FakeStripeState) -> FastAPI:
    """The FAKE Stripe API over `state`; serve it with `fakes.server.serve_in_thread`."""
    app = FastAPI(title="FAKE Stripe API (tests and demo only)", openapi_url=None, docs_url=None)

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def handle(path: str, request: Request) -> JSONResponse:
        if request.method == "POST":
            params = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        else:
            params = dict(request.query_params)
        auth = request.headers.get("authorization")
        state.record(RecordedRequest(request.method, request.url.path, params,
                                     request.headers.get("idempotency-key"),
                                     auth.split(" ", 1)[0] if auth else None))
        try:
            if not auth or not auth.startswith("Bearer ") or not auth[7:].strip():
                raise StripeApiError(401, "You did not provide an API key. You need to provide your API key "
                                          "in the Authorization header, using Bearer auth.")
            if auth[7:].strip() not in state.api_keys:
                raise StripeApiError(401, f"Invalid API Key provided: {_redact(auth[7:].strip())}")
            if (failure := state._pop_failure()) is not None:
                raise StripeApiError(failure, "An unknown error occurred (injected by the fake).",
                                     type_="api_error")
            parts = path.strip("/").split("/")
            if len(parts) in (2, 3) and parts[0] == "v1" and parts[1] in KINDS:
                kind = parts[1]
                if len(parts) == 2 and request.method == "GET":
                    return JSONResponse(state.list_page(kind, params))
                if len(parts) == 3 and request.method == "GET":
                    obj = state.get(kind, parts[2])
                    if obj is None:
                        raise StripeApiError(404, f"No such {KINDS[kind][1]}: '{parts[2]}'",
                                             code="resource_missing", param="id")
                    return JSONResponse(obj)
                if len(parts) == 2 and request.method == "POST" and kind == "payment_intents":
                    status, body, replayed = state.create_payment_intent(
                        params, request.headers.get("idempotency-key"))
                    return JSONResponse(body, status_code=status,
                                        headers={"Idempotent-Replayed": "true"} if replayed else {})
                if len(parts) == 2 and request.method == "POST" and kind == "refunds":
                    status, body, replayed = state.create_refund(
                        params, request.headers.get("idempotency-key"))
                    return JSONResponse(body, status_code=status,
                                        headers={"Idempotent-Replayed": "true"} if replayed else {})
            raise StripeApiError(404, f"Unrecognized request URL ({request.method}: {request.url.path}). "
                                      "Please see https://stripe.com/docs or we can help at "
                                      "https://support.stripe.com/.")
        except StripeApiError as exc:
            return JSONResponse(exc.body, status_code=exc.status)

    return app


def _redact(key: str) -> str:
    return f"{key[:8]}{'*' * max(len(key) - 12, 0)}{key[-4:]}" if len(key) > 12 else "****"


# -- webhooks -----------------------------------------------------------------------------------------
def stripe_signature_header(payload: bytes, secret: str, timestamp: int | None = None,
                            extra_secrets: Iterable[str] = ()) -> str:
    """`t=<unix>,v1=<hex>[,v1=<hex>...]`: HMAC-SHA256 with each secret over f"{t}.{body}", as Stripe signs
    (one v1 per active endpoint secret during a roll)."""
    t = int(timestamp if timestamp is not None else time.time())
    signed = f"{t}.".encode() + payload
    sigs = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in (secret, *extra_secrets)]
    return ",".join([f"t={t}", *(f"v1={s}" for s in sigs)])


def deliver_webhook(url: str, event: dict, secret: str, *, timestamp: int | None = None,
                    extra_secrets: Iterable[str] = (), timeout: float = 10.0) -> httpx.Response:
    """POST `event` as JSON to `url` with a `Stripe-Signature` header, as Stripe delivers it."""
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json; charset=utf-8",
               "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
               "Stripe-Signature": stripe_signature_header(body, secret, timestamp, extra_secrets)}
    return httpx.post(url, content=body, headers=headers, timeout=timeout)
