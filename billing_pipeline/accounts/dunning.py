"""Dunning: failed invoice payments retried through the provider, never charged twice.

The retry schedule (BILLING_DUNNING_RETRY_DAYS, default 1, 3, 5, 7) counts days from the start of the
invoice's grace period, i.e. its first failed payment. Each run, as of an instant T:

1. claim (one statement, committed): per unpaid invoice in a grace period, the latest slot of the
   schedule due by T becomes a `pending` attempt with the idempotency key `dunning:<invoice>:<slot>` and
   the amount then owed (sql/claim_dunning_attempts.sql). Organisations Stripe cannot charge
   off-session (Razorpay, none, no customer id) get a `skipped` attempt and a request to pay;
2. call: every pending attempt (just claimed, or left pending by a run that stopped after the call) is
   sent as a confirmed, off-session Stripe PaymentIntent with that key and parameters derived only from
   the stored row, so a repeat is byte-for-byte the same request and Stripe replays its first answer.
   Stripe keeps idempotency keys for 24 hours (https://docs.stripe.com/api/idempotent_requests): an
   attempt pending longer than KEY_TTL is first looked up among the customer's PaymentIntents by its
   key in the metadata, and only created when none exists;
3. record (one transaction): results, their audit rows, a notification per failed or skipped attempt,
   and each successful charge applied to billing.payments and settled against the invoice (the payments
   domain's ledger and settlement), so the grace run that follows sees the invoice paid.

A crash between 2 and 3 leaves the attempts pending; the next run repeats step 2 with the same keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import stripe
from sqlalchemy.engine import Engine

from billing_pipeline import accounts
from billing_pipeline.accounts import outbox
from billing_pipeline.accounts.clock import Clock
from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import stripe_observation
from billing_pipeline.providers import retry
from billing_pipeline.payments.settlement import settle_invoices

log = logging.getLogger(__name__)

KEY_TTL = timedelta(hours=23)  # Stripe forgets a key after 24 h; an hour of margin
# Errors that say the outcome is unknown or not ours to decide: the attempt stays pending and is
# repeated with the same key. Everything else the provider answered is final for that attempt.
_RETRYABLE = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.AuthenticationError,
    stripe.PermissionError,
    stripe.APIError,
)


@dataclass
class DunningResult:
    claimed: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)  # recorded: succeeded, failed, or still pending
    notifications_queued: int = 0
    unavailable: list[str] = field(default_factory=list)  # Stripe down through the retries: why

    def counts(self) -> dict[str, int]:
        """Attempts by outcome: succeeded, failed, pending (outcome unknown, repeated next run), skipped."""
        counts = {"succeeded": 0, "failed": 0, "pending": 0, "skipped": 0}
        for row in [*self.results, *(c for c in self.claimed if c["status"] == "skipped")]:
            counts[row["status"]] += 1
        return counts


def payment_intent_params(
    attempt: dict, *, description: str | None = None, key_field: str = "dunning_key"
) -> dict:
    """The PaymentIntent of an attempt, from its stored row only (a repeat must be the same request).

    Also the first collection's (payments/collection.py): its own description, its key under `key_field`."""
    return {
        "amount": int(attempt["amount_minor"]),
        "currency": attempt["currency"].strip().lower(),
        "customer": attempt["provider_customer_id"],
        "confirm": True,
        "off_session": True,
        "description": description or f"Invoice {attempt['number']}: payment retry {attempt['attempt']}",
        "metadata": {
            "invoice_id": str(attempt["invoice_id"]),
            "invoice_number": attempt["number"],
            "organisation_id": attempt["organisation_id"],
            key_field: attempt["idempotency_key"],
        },
    }


def run_dunning(
    engine: Engine,
    client: stripe.StripeClient | None,
    *,
    as_of: datetime,
    clock: Clock,
    actor: str,
    retry_days: Sequence[int],
) -> DunningResult:
    """Claim, call and record (module docstring). Without a Stripe client (STRIPE_API_KEY unset) every
    attempt is skipped with that reason, and attempts left pending stay pending."""
    result = DunningResult()
    with engine.begin() as conn:
        accounts.lock(conn)
        result.claimed = accounts.fetch(
            conn,
            "claim_dunning_attempts",
            {
                "as_of": as_of,
                "now": clock.now(),
                "actor": actor,
                "retry_days": list(retry_days),
                "stripe_enabled": client is not None,
            },
        )
        record(
            conn,
            [
                AuditEntry(
                    "dunning_attempt",
                    str(c["attempt_id"]),
                    "claimed",
                    actor=actor,
                    to_state=c["status"],
                    detail=_detail(c),
                )
                for c in result.claimed
            ],
        )
        result.notifications_queued += outbox.queue(
            conn,
            [_action_required(c) for c in result.claimed if c["status"] == "skipped"],
            at=as_of,
            actor=actor,
        )
        moot = accounts.fetch(conn, "cancel_moot_dunning_attempts", {"now": clock.now()})
        record(
            conn,
            [
                AuditEntry(
                    "dunning_attempt", str(m["attempt_id"]), "canceled", actor=actor,
                    from_state="pending", to_state="canceled", detail=_detail(m),
                )
                for m in moot
            ],
        )
        pending = accounts.fetch(conn, "pending_dunning_attempts")
    if not pending or client is None:
        return result

    # Provider calls, outside any transaction. Once Stripe is unavailable through the retries, the
    # remaining attempts are not tried: they stay pending for the next run, with the same keys.
    outcomes = []
    for attempt in pending:
        if result.unavailable:
            outcomes.append(_Outcome(_pending_row(attempt, "provider_unavailable", result.unavailable[0])))
            continue
        outcomes.append(_charge(client, attempt, clock.now()))
        if outcomes[-1].row["error_code"] == "provider_unavailable":
            result.unavailable.append(outcomes[-1].row["error_message"])

    with engine.begin() as conn:
        result.results = accounts.fetch(
            conn,
            "record_dunning_results",
            {"results": json.dumps([o.row for o in outcomes]), "now": clock.now()},
        )
        record(
            conn,
            [
                AuditEntry(
                    "dunning_attempt",
                    str(r["attempt_id"]),
                    "charged" if r["status"] == "succeeded" else "charge_failed",
                    actor=actor,
                    from_state="pending",
                    to_state=r["status"],
                    detail=_detail(r),
                )
                for r in result.results
                if r["status"] != "pending"
            ],
        )
        charged = [o for o in outcomes if o.objects]
        if charged:
            apply_observations(
                conn,
                [Seen(stripe_observation(obj)) for o in charged for obj in o.objects],
                via="sync",
                actor=actor,
            )
            settle_invoices(conn, actor=actor)
        result.notifications_queued += outbox.queue(
            conn,
            [_retry_failed(r, retry_days) for r in result.results if r["status"] == "failed"],
            at=as_of,
            actor=actor,
        )
    return result


@dataclass
class _Outcome:
    row: dict
    objects: list[dict] = field(default_factory=list)  # the PaymentIntent and its charge, when it succeeded


def _pending_row(attempt: dict, error_code: str | None = None, error_message: str | None = None) -> dict:
    return {
        "attempt_id": attempt["attempt_id"],
        "status": "pending",
        "provider_object_id": None,
        "provider_charge_id": None,
        "error_code": error_code,
        "error_message": error_message,
    }


def _charge(
    client: stripe.StripeClient, attempt: dict, now: datetime, *, params: dict | None = None,
    key_field: str = "dunning_key",
) -> _Outcome:
    """Send (or, past KEY_TTL, first look up) the attempt's PaymentIntent; `params` and `key_field` let the
    first collection (payments/collection.py) send its own request through the same path."""
    row = _pending_row(attempt)
    action = f"charging invoice {attempt['number']} ({attempt['idempotency_key']})"
    try:
        intent = _find_intent(client, attempt, key_field) if now - attempt["claimed_at"] >= KEY_TTL else None
        if intent is None:
            intent = retry.call("stripe", action, lambda: client.v1.payment_intents.create(
                params=params or payment_intent_params(attempt),
                options={"idempotency_key": attempt["idempotency_key"]},
            )).to_dict()
        row["provider_object_id"] = intent["id"]
        if intent["status"] == "succeeded":
            charge = retry.call("stripe", action, lambda: client.v1.charges.retrieve(intent["latest_charge"])).to_dict()
            row |= {"status": "succeeded", "provider_charge_id": charge["id"]}
            return _Outcome(row, [intent, charge])
        if intent["status"] in ("processing", "requires_capture"):
            row["error_message"] = f"payment intent {intent['status']}: checked again on the next run"
            return _Outcome(row)
        error = intent.get("last_payment_error") or {}
        row |= {
            "status": "failed",
            "error_code": error.get("decline_code") or error.get("code") or intent["status"],
            "error_message": error.get("message") or f"payment intent {intent['status']}",
        }
    except stripe.CardError as exc:
        body = exc.json_body.get("error", {}) if isinstance(exc.json_body, dict) else {}
        intent = body.get("payment_intent") or {}
        row |= {
            "status": "failed",
            "error_code": body.get("decline_code") or exc.code or "card_error",
            "error_message": exc.user_message or str(exc),
            "provider_object_id": intent.get("id"),
            "provider_charge_id": body.get("charge"),
        }
    except retry.ProviderUnavailable as exc:
        log.warning("dunning %s: %s; repeated on the next run", attempt["idempotency_key"], exc)
        row |= {"error_code": "provider_unavailable", "error_message": str(exc)[:500]}
    except _RETRYABLE as exc:
        log.warning(
            "dunning %s: outcome unknown (%s), repeated on the next run",
            attempt["idempotency_key"],
            type(exc).__name__,
        )
        row |= {"error_code": type(exc).__name__, "error_message": str(exc)[:500]}
    except stripe.StripeError as exc:  # invalid request, idempotency conflict: final for this attempt
        row |= {
            "status": "failed",
            "error_code": exc.code or type(exc).__name__,
            "error_message": str(exc)[:500],
        }
    return _Outcome(row)


def _find_intent(client: stripe.StripeClient, attempt: dict, key_field: str = "dunning_key") -> dict | None:
    """The PaymentIntent created for the attempt, if any (its key is in the metadata)."""
    since = int((attempt["claimed_at"] - timedelta(hours=1)).timestamp())
    params = {"customer": attempt["provider_customer_id"], "created": {"gte": since}, "limit": 100}
    while True:
        page = retry.call("stripe", f"looking up the PaymentIntent of {attempt['idempotency_key']}",
                          lambda: client.v1.payment_intents.list(params=dict(params)))
        for intent in page.data:
            data = intent.to_dict()
            if (data.get("metadata") or {}).get(key_field) == attempt["idempotency_key"]:
                return data
        if not page.has_more or not page.data:
            return None
        params["starting_after"] = page.data[-1].id


def _detail(row: dict) -> dict:
    keys = (
        "invoice_id",
        "number",
        "attempt",
        "idempotency_key",
        "amount_minor",
        "currency",
        "error_code",
        "error_message",
        "provider_object_id",
    )
    return {k: row[k] for k in keys if row.get(k) is not None}


def _action_required(a: dict) -> outbox.Notification:
    return outbox.Notification(
        dedupe_key=f"payment_action_required:{a['attempt_id']}",
        kind="payment_action_required",
        organisation_id=a["organisation_id"],
        subject=f"Invoice {a['number']} is waiting for your payment",
        body=(
            f"Invoice {a['number']} still has {outbox.money(a['amount_minor'], a['currency'])} due and we "
            "cannot charge it automatically. Please pay it to avoid a restriction of your account."
        ),
        payload={
            "invoice_id": a["invoice_id"],
            "number": a["number"],
            "amount_minor": a["amount_minor"],
            "currency": a["currency"],
            "attempt": a["attempt"],
        },
    )


def _retry_failed(r: dict, retry_days: Sequence[int]) -> outbox.Notification:
    last = r["attempt"] >= len(retry_days)
    nxt = (
        "This was the last automatic retry: please pay the invoice or update your payment method."
        if last
        else "We will try again in a few days; updating your payment method helps."
    )
    return outbox.Notification(
        dedupe_key=f"payment_retry_failed:{r['attempt_id']}",
        kind="payment_retry_failed",
        organisation_id=r["organisation_id"],
        subject=f"Payment retry {r['attempt']} of {len(retry_days)} failed for invoice {r['number']}",
        body=(
            f"We could not collect {outbox.money(r['amount_minor'], r['currency'])} for invoice {r['number']}"
            f" ({r['error_message'] or r['error_code']}). {nxt}"
        ),
        payload={
            "invoice_id": r["invoice_id"],
            "number": r["number"],
            "attempt": r["attempt"],
            "error_code": r["error_code"],
            "last_retry": last,
        },
    )
