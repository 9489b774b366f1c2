"""FAKE Razorpay API server: a local stand-in for tests and the demo, never for real money.

It speaks enough of Razorpay's v1 wire format for the real `razorpay` SDK (2.x,
`razorpay.Client(auth=(key_id, key_secret), base_url="http://127.0.0.1:<port>")`; the SDK appends
"/v1/..." itself) to accept it: basic auth, `from`/`to` (inclusive unix seconds), `count` (default 10,
max 100) and `skip` offset paging newest first, `{"entity": "collection", ...}` answers, Razorpay's
error shape, and signed webhooks (`X-Razorpay-Signature` = hex HMAC-SHA256 of the raw body).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

# collection path -> (id prefix, "entity" value, extra list filters)
KINDS: dict[str, tuple[str, str, frozenset[str]]] = {
    "payments": ("pay", "payment", frozenset()),
    "orders": ("order", "order", frozenset({"receipt", "authorized"})),
    "refunds": ("rfnd", "refund", frozenset()),
    "settlements": ("setl", "settlement", frozenset()),
    "payment_links": ("plink", "payment_link", frozenset()),  # listed by list_payment_links, not from/to
}
_LINK_CREATE_FIELDS = {
    "amount", "currency", "accept_partial", "first_min_partial_amount", "expire_by", "reference_id",
    "description", "customer", "notify", "reminder_enable", "notes", "callback_url", "callback_method",
    "upi_link",
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    params: dict[str, str]
    auth_scheme: str | None  # "Basic" or None; credentials are not kept


class RazorpayApiError(Exception):
    def __init__(self, status: int, description: str, code: str = "BAD_REQUEST_ERROR",
                 field: str | None = None):
        super().__init__(description)
        error = {"code": code, "description": description, "source": "NA", "step": "NA", "reason": "NA",
                 "metadata": {}}
        if field:
            error["field"] = field
        self.status, self.body = status, {"error": error}


class FakeRazorpayState:
    """In-memory, thread-safe store behind the fake. Tests and the demo seeder fill it directly."""

    def __init__(self, key_id: str = "rzp_test_fakekey", key_secret: str = "fake_key_secret") -> None:
        self.credentials = {(key_id, key_secret)}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._objects: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
        self._seq = 0

    def _put(self, kind: str, obj: dict) -> dict:
        with self._lock:
            if not obj.get("id"):
                self._seq += 1
                obj["id"] = f"{KINDS[kind][0]}_FAKE{self._seq:010d}"
            if obj["id"] in self._objects[kind]:
                raise ValueError(f"duplicate id {obj['id']}")
            self._objects[kind][obj["id"]] = obj
            return _wire(obj)

    def record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def get(self, kind: str, obj_id: str) -> dict | None:
        with self._lock:
            obj = self._objects[kind].get(obj_id)
            return _wire(obj) if obj else None

    def update(self, kind: str, obj_id: str, **fields: Any) -> dict:
        """Change a stored object in place (e.g. a late failed -> authorized), as the provider would."""
        with self._lock:
            self._objects[kind][obj_id].update(fields)
            return _wire(self._objects[kind][obj_id])

    # -- seeding -----------------------------------------------------------------------------------
    def add_order(self, amount: int, currency: str = "INR", *, receipt: str | None = None,
                  notes: dict | None = None, status: str = "created", created_at: int | None = None,
                  id: str | None = None) -> dict:
        return self._put("orders", {
            "id": id, "entity": "order", "amount": int(amount), "amount_paid": 0, "amount_due": int(amount),
            "currency": currency.upper(), "receipt": receipt, "offer_id": None, "status": status,
            "attempts": 0, "notes": dict(notes or {}), "created_at": _now(created_at),
        })

    def add_payment(self, amount: int, currency: str = "INR", *, status: str = "captured",
                    order_id: str | None = None, method: str = "upi", notes: dict | None = None,
                    created_at: int | None = None, email: str | None = None, contact: str | None = None,
                    fee: int | None = None, tax: int | None = None, description: str | None = None,
                    error_code: str | None = None, customer_id: str | None = None,
                    id: str | None = None) -> dict:
        """A payment; a captured one gets a 2% fee (+18% GST) unless given, and pays its known order."""
        captured = status in ("captured", "refunded")
        if captured and fee is None:
            fee = (amount * 2 + 50) // 100  # 2 %, half-up in integer paise
            tax = (fee * 18 + 50) // 100 if tax is None else tax  # 18 % GST on the fee
        failed = status == "failed"
        with self._lock:
            payment = self._put("payments", {
                "id": id, "entity": "payment", "amount": int(amount), "currency": currency.upper(),
                "status": status, "order_id": order_id, "customer_id": customer_id, "invoice_id": None,
                "international": False,
                "method": method, "amount_refunded": 0, "refund_status": None, "captured": captured,
                "description": description, "card_id": None, "bank": None, "wallet": None,
                "vpa": "success@razorpay" if method == "upi" else None, "email": email, "contact": contact,
                "notes": dict(notes or {}), "fee": fee, "tax": tax,
                "error_code": (error_code or "BAD_REQUEST_ERROR") if failed else None,
                "error_description": "Payment failed" if failed else None,
                "error_source": None, "error_step": None, "error_reason": None, "acquirer_data": {},
                "created_at": _now(created_at),
            })
            order = self._objects["orders"].get(order_id or "")
            if order is not None:
                order["attempts"] += 1
                order["status"] = "attempted" if order["status"] == "created" else order["status"]
                if captured:
                    order["amount_paid"] += int(amount)
                    order["amount_due"] = max(order["amount"] - order["amount_paid"], 0)
                    order["status"] = "paid" if order["amount_due"] == 0 else order["status"]
            return payment

    def add_refund(self, payment_id: str, amount: int | None = None, *, notes: dict | None = None,
                   status: str = "processed", created_at: int | None = None, currency: str = "INR",
                   id: str | None = None) -> dict:
        """A refund of a payment (default: what is left of it); a full refund makes it `refunded`."""
        with self._lock:
            payment = self._objects["payments"].get(payment_id)
            if amount is None:
                if payment is None:
                    raise KeyError(f"unknown payment {payment_id}: pass amount")
                amount = payment["amount"] - payment["amount_refunded"]
            refund = self._put("refunds", {
                "id": id, "entity": "refund", "amount": int(amount),
                "currency": payment["currency"] if payment else currency.upper(), "payment_id": payment_id,
                "notes": dict(notes or {}), "receipt": None, "acquirer_data": {"arn": None},
                "created_at": _now(created_at), "batch_id": None, "status": status,
                "speed_processed": "normal", "speed_requested": "normal",
            })
            if payment is not None and status == "processed":
                payment["amount_refunded"] += int(amount)
                full = payment["amount_refunded"] >= payment["amount"]
                payment["refund_status"] = "full" if full else "partial"
                payment["status"] = "refunded" if full else payment["status"]
            return refund

    def add_settlement(self, amount: int, *, fees: int = 0, tax: int = 0, utr: str | None = None,
                       status: str = "processed", created_at: int | None = None,
                       id: str | None = None) -> dict:
        return self._put("settlements", {
            "id": id, "entity": "settlement", "amount": int(amount), "status": status, "fees": int(fees),
            "tax": int(tax), "utr": utr or f"FAKEUTR{uuid.uuid4().hex[:10].upper()}",
            "created_at": _now(created_at),
        })

    # -- payment links (https://razorpay.com/docs/api/payments/payment-links/) ----------------------
    def create_payment_link(self, body: dict) -> dict:
        """POST /v1/payment_links: a Standard Payment Link; `reference_id` must be unique among links."""
        for key in body:
            if key not in _LINK_CREATE_FIELDS:
                raise RazorpayApiError(400, f"{key} is/are not required and should not be sent", field=key)
        amount = body.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 100:
            raise RazorpayApiError(400, "The amount must be atleast INR 1.00", field="amount")
        now = _now(None)
        expire_by = body.get("expire_by")
        if expire_by is not None and (not isinstance(expire_by, int) or expire_by <= now + 15 * 60):
            raise RazorpayApiError(400, "expire_by should be at least 15 minutes after current time",
                                   field="expire_by")
        ref = body.get("reference_id")
        with self._lock:
            if ref and any(l["reference_id"] == ref for l in self._objects["payment_links"].values()):
                raise RazorpayApiError(400, f"payment link with given reference_id {ref} already exists",
                                       field="reference_id")
            self._seq += 1
            link_id = f"plink_FAKE{self._seq:010d}"
            return self._put("payment_links", {
                "id": link_id, "entity": "payment_link", "amount": amount, "amount_paid": 0,
                "currency": str(body.get("currency") or "INR").upper(),
                "accept_partial": bool(body.get("accept_partial", False)),
                "first_min_partial_amount": body.get("first_min_partial_amount", 0),
                "description": body.get("description"), "customer": body.get("customer") or {},
                "notify": body.get("notify") or {"email": False, "sms": False},
                "reminder_enable": bool(body.get("reminder_enable", False)),
                "notes": dict(body.get("notes") or {}),
                "reference_id": ref or "", "expire_by": expire_by or now + 180 * 86400, "expired_at": 0,
                "cancelled_at": 0, "status": "created", "payments": None, "upi_link": False,
                "callback_url": body.get("callback_url", ""),
                "callback_method": body.get("callback_method", ""),
                "short_url": f"https://rzp.io/i/{link_id[-10:]}", "user_id": "",
                "created_at": now, "updated_at": now,
            })

    def list_payment_links(self, params: dict[str, str]) -> dict:
        """GET /v1/payment_links: `{"payment_links": [...]}`, filtered by reference_id or payment_id."""
        for key in params:
            if key not in ("reference_id", "payment_id"):
                raise RazorpayApiError(400, f"{key} is/are not required and should not be sent", field=key)
        with self._lock:
            links = [_wire(l) for l in sorted(self._objects["payment_links"].values(),
                                              key=lambda l: (l["created_at"], l["id"]), reverse=True)
                     if l["reference_id"] == params.get("reference_id", l["reference_id"])
                     and (not params.get("payment_id")
                          or any(p["payment_id"] == params["payment_id"] for p in l["payments"] or []))]
        return {"payment_links": links}

    def cancel_payment_link(self, link_id: str) -> dict:
        """POST /v1/payment_links/:id/cancel: only a link that is `created` or `partially_paid` can be
        cancelled; it becomes `cancelled` with its `cancelled_at`."""
        with self._lock:
            link = self._objects["payment_links"].get(link_id)
            if link is None:
                raise RazorpayApiError(400, "The id provided does not exist", field="id")
            if link["status"] not in ("created", "partially_paid"):
                raise RazorpayApiError(400, f"Payment Link cannot be cancelled as it is {link['status']}")
            link["status"] = "cancelled"
            link["cancelled_at"] = link["updated_at"] = _now(None)
            return _wire(link)

    def pay_link(self, link_id: str, *, method: str = "upi", created_at: int | None = None) -> dict:
        """The customer pays the link in full: an order (with the link's notes and its reference_id as
        receipt), a captured payment, the link `paid`. Returns the `payment_link.paid` webhook body."""
        with self._lock:
            link = self._objects["payment_links"][link_id]
            if link["status"] != "created":
                raise ValueError(f"payment link {link_id} is {link['status']}")
            due = link["amount"] - link["amount_paid"]
            order = self.add_order(due, link["currency"], receipt=link["reference_id"], notes=link["notes"],
                                   created_at=created_at)
            payment = self.add_payment(due, link["currency"], order_id=order["id"], method=method,
                                       created_at=created_at, description=f"#{link_id[6:]}")
            link["amount_paid"] += due
            link["status"] = "paid"
            link["updated_at"] = payment["created_at"]
            link["payments"] = [{"amount": due, "created_at": payment["created_at"], "method": method,
                                 "payment_id": payment["id"], "plink_id": link_id, "status": "captured",
                                 "updated_at": payment["created_at"]}]
            return webhook_event("payment_link.paid", created_at=payment["created_at"],
                                 payment_link=_wire(link), order=self.get("orders", order["id"]),
                                 payment=self.get("payments", payment["id"]))

    def create_refund(self, payment_id: str, body: dict) -> dict:
        """POST /v1/payments/:id/refund (amount optional: the rest of the payment)."""
        with self._lock:
            payment = self._objects["payments"].get(payment_id)
            if payment is None:
                raise RazorpayApiError(400, "The id provided does not exist", field="id")
            left = payment["amount"] - payment["amount_refunded"]
            amount = body.get("amount", left)
            if not payment["captured"]:
                raise RazorpayApiError(400, "The payment has not been captured")
            if isinstance(amount, bool) or not isinstance(amount, int) or not 100 <= amount <= left:
                raise RazorpayApiError(400, "The refund amount provided is greater than amount captured"
                                       if isinstance(amount, int) and amount > left
                                       else "The amount must be atleast INR 1.00", field="amount")
            refund = self.add_refund(payment_id, amount, notes=body.get("notes"))
            if body.get("receipt"):
                self._objects["refunds"][refund["id"]]["receipt"] = body["receipt"]
            return self.get("refunds", refund["id"])

    def refunds_of(self, payment_id: str) -> dict:
        """GET /v1/payments/:id/refunds."""
        with self._lock:
            items = [_wire(r) for r in self._objects["refunds"].values() if r["payment_id"] == payment_id]
        return {"entity": "collection", "count": len(items), "items": items}

    # -- API operations ----------------------------------------------------------------------------
    def list_page(self, kind: str, params: dict[str, str]) -> dict:
        filters = KINDS[kind][2]
        for key in params:
            if key not in {"from", "to", "count", "skip"} | filters and not key.startswith("expand"):
                raise RazorpayApiError(400, f"{key} is/are not required and should not be sent", field=key)
        lo = _int_param("from", params.get("from", "0"))
        hi = _int_param("to", params.get("to", str(2**62)))
        count = _int_param("count", params.get("count", "10"))
        skip = _int_param("skip", params.get("skip", "0"))
        if count > 100:
            raise RazorpayApiError(400, "The count may not be greater than 100.", field="count")
        if count < 1:
            raise RazorpayApiError(400, "The count must be at least 1.", field="count")
        if skip < 0:
            raise RazorpayApiError(400, "The skip must be at least 0.", field="skip")
        if lo > hi:
            raise RazorpayApiError(400, "The to must be greater than or equal to from.", field="to")
        with self._lock:
            rows = sorted((o for o in self._objects[kind].values()
                           if lo <= o["created_at"] <= hi  # both bounds inclusive, as Razorpay documents
                           and all(str(o.get(f)) == params[f] for f in filters if f in params)),
                          key=lambda o: (o["created_at"], o["id"]), reverse=True)
            items = [_wire(o) for o in rows[skip:skip + count]]
        return {"entity": "collection", "count": len(items), "items": items}


def _now(ts: int | None) -> int:
    return int(ts if ts is not None else time.time())


def _wire(obj: dict) -> dict:
    out = copy.deepcopy(obj)
    if out.get("notes") == {}:
        out["notes"] = []  # Razorpay serializes empty notes as a JSON array, not an object
    return out


def _int_param(name: str, value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RazorpayApiError(400, f"The {name} must be an integer.", field=name) from None


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise RazorpayApiError(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RazorpayApiError(400, "The request body must be a JSON object")
    return body


def create_app(state: FakeRazorpayState) -> FastAPI:
    """The FAKE Razorpay API over `state`; serve it with `fakes.server.serve_in_thread`."""
    app = FastAPI(title="FAKE Razorpay API (tests and demo only)", openapi_url=None, docs_url=None)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    async def handle(path: str, request: Request) -> JSONResponse:
        params = dict(request.query_params)
        auth = request.headers.get("authorization")
        state.record(RecordedRequest(request.method, request.url.path, params,
                                     auth.split(" ", 1)[0] if auth else None))
        try:
            if not auth or not auth.startswith("Basic "):
                raise RazorpayApiError(401, "Please provide your api key for authentication purposes.")
            try:
                key_id, _, key_secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise RazorpayApiError(401, "Authentication failed") from None
            if (key_id, key_secret) not in state.credentials:
                raise RazorpayApiError(401, "Authentication failed")
            parts = path.strip("/").split("/")
            if parts[:2] == ["v1", "payment_links"] and len(parts) == 2:
                if request.method == "POST":
                    return JSONResponse(state.create_payment_link(await _json_body(request)))
                if request.method == "GET":
                    return JSONResponse(state.list_payment_links(params))
            if parts[:2] == ["v1", "payment_links"] and len(parts) == 4 and parts[3] == "cancel":
                if request.method == "POST":
                    return JSONResponse(state.cancel_payment_link(parts[2]))
            if parts[:2] == ["v1", "payments"] and len(parts) == 4:
                if parts[3] == "refund" and request.method == "POST":
                    return JSONResponse(state.create_refund(parts[2], await _json_body(request)))
                if parts[3] == "refunds" and request.method == "GET":
                    return JSONResponse(state.refunds_of(parts[2]))
            if request.method == "GET" and len(parts) in (2, 3) and parts[0] == "v1" and parts[1] in KINDS:
                if len(parts) == 2:
                    return JSONResponse(state.list_page(parts[1], params))
                obj = state.get(parts[1], parts[2])
                if obj is None:
                    raise RazorpayApiError(400, "The id provided does not exist", field="id")
                return JSONResponse(obj)
            raise RazorpayApiError(404, "The requested URL was not found on the server.")
        except RazorpayApiError as exc:
            return JSONResponse(exc.body, status_code=exc.status)

    return app


# -- webhooks -----------------------------------------------------------------------------------------
def razorpay_signature(body: bytes, secret: str) -> str:
    """`X-Razorpay-Signature`: hex HMAC-SHA256 of the raw body with the webhook secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_event(event: str, *, created_at: int | None = None, account_id: str = "acc_FAKE0000000001",
                  **entities: dict) -> dict:
    """A webhook body as Razorpay posts it, e.g. webhook_event("payment.captured", payment=p)."""
    return {"entity": "event", "account_id": account_id, "event": event, "contains": list(entities),
            "payload": {name: {"entity": copy.deepcopy(obj)} for name, obj in entities.items()},
            "created_at": _now(created_at)}


def deliver_webhook(url: str, event: dict, secret: str, event_id: str | None = None, *,
                    timeout: float = 10.0) -> httpx.Response:
    """POST `event` as JSON to `url` signed as Razorpay signs it, with its `x-razorpay-event-id`."""
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-Razorpay-Signature": razorpay_signature(body, secret),
               "x-razorpay-event-id": event_id or uuid.uuid4().hex[:14]}
    return httpx.post(url, content=body, headers=headers, timeout=timeout)
