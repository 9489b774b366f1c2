"""Payment collection: the first attempt to collect each finalized invoice of a month at its provider.

Dunning retries a payment that failed; this is the attempt before it. Per month, as of an instant T:

1. claim (one statement, committed; sql/claim_collections.sql): every finalized invoice of the month
   without a collection gets one row in billing.collection_attempts, with the idempotency key
   `collect:<invoice id>` and the amount then due. Where the organisation's catalog says so
   (wallet.pays_invoices), its prepaid wallet pays first, as far as it holds money. Nothing due (a zero total, or credited to zero): settled
   without a provider call. Organisations that cannot be collected from are asked to pay (outbox);
2. call, outside any transaction: every pending row of the month (just claimed, or left pending by a run
   that stopped after the call) is sent, its request built only from the stored row:
   - Stripe: a confirmed, off-session PaymentIntent through dunning's own path (`payment_intent_params`,
     `_charge`, which past Stripe's 24-hour key lifetime first looks the intent up by its metadata), so
     a repeat is the same request and Stripe replays its first answer;
   - Razorpay: a Payment Link (reference_id = the invoice number, the invoice id in its notes, expire_by
     fixed at claim). Razorpay has no idempotency key for links, so a link is first looked up by its
     reference id and only created when none exists;
3. record (one transaction; sql/record_collections.sql): results and their audit rows; a successful
   charge applied to billing.payments and settled against its invoice; a declined one applied too, so
   that the grace period opens (accounts/grace.py) and dunning takes over; each link's URL queued in the
   notification outbox. The `payment_link.paid` webhook then settles the invoice like any payment.

Two runs of one month at once: the claim is once per invoice (UNIQUE invoice_id); both may send a
pending row, with the same key and parameters, and the provider answers both with one object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime

import razorpay
import requests
import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Engine

from billing_pipeline.accounts import outbox
from billing_pipeline.accounts.clock import Clock
from billing_pipeline.accounts.dunning import _charge, _Outcome, payment_intent_params
from billing_pipeline.accounts.grace import run_grace
from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.payments import sql_text
from billing_pipeline.payments.ledger import Seen, apply_observations
from billing_pipeline.payments.objects import stripe_observation
from billing_pipeline.payments.settlement import settle_invoices
from billing_pipeline.wallet import ledger as wallet

log = logging.getLogger(__name__)

LOCK_KEY = 0x636F6C6C  # "coll": claims of a month never interleave
KEY_FIELD = "collection_key"  # the PaymentIntent's metadata key that names its collection
LINK_DAYS = 14  # a payment link expires two weeks after it was claimed
CALL_THREADS = 8  # provider calls in flight at once (each is idempotent)


@dataclass
class CollectionResult:
    claimed: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    grace_opened: int = 0
    notifications_queued: int = 0
    wallet_paid: list[dict] = field(default_factory=list)  # invoice_id, amount_minor, currency

    def counts(self) -> dict[str, int]:
        """Invoices by outcome of this run."""
        counts: dict[str, int] = {}
        for row in [*self.results, *(c for c in self.claimed if c["status"] != "pending")]:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts


def intent_params(row: dict) -> dict:
    """The collection's PaymentIntent, from its stored row only (dunning's request, its own key)."""
    return payment_intent_params(row, description=f"Invoice {row['number']}", key_field=KEY_FIELD)


def link_params(row: dict) -> dict:
    """The collection's Payment Link, from its stored row only."""
    return {
        "amount": int(row["amount_minor"]),
        "currency": row["currency"].strip().upper(),
        "accept_partial": False,
        "reference_id": row["number"],
        "description": f"Invoice {row['number']}",
        "expire_by": int(row["link_expire_by"].timestamp()),
        "reminder_enable": True,
        "notes": {
            "invoice_id": str(row["invoice_id"]),
            "invoice_number": row["number"],
            "organisation_id": row["organisation_id"],
        },
    }


def collect_month(
    engine: Engine,
    period_start: date,
    *,
    stripe_client: stripe.StripeClient | None,
    razorpay_client: razorpay.Client | None,
    clock: Clock,
    actor: str,
    link_days: int = LINK_DAYS,
    threads: int = CALL_THREADS,
    after_calls: Callable[[], None] | None = None,
) -> CollectionResult:
    """Claim, call and record (module docstring). `after_calls` runs between the provider calls and the
    recording (tests stop the process there)."""
    result = CollectionResult()
    now = clock.now()
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        result.wallet_paid = _pay_from_wallets(conn, period_start, actor)
        result.claimed = _fetch(
            conn,
            "claim_collections",
            period_start=period_start,
            now=now,
            actor=actor,
            link_days=link_days,
            stripe_enabled=stripe_client is not None,
            razorpay_enabled=razorpay_client is not None,
        )
        record(
            conn,
            [
                AuditEntry(
                    "collection_attempt",
                    str(c["collection_id"]),
                    "claimed",
                    actor=actor,
                    to_state=c["status"],
                    detail=_detail(c),
                )
                for c in result.claimed
            ],
        )
        result.notifications_queued += outbox.queue(
            conn, [_asked_to_pay(c) for c in result.claimed if c["status"] == "skipped"], at=now, actor=actor
        )
        pending = _fetch(
            conn,
            "pending_collections",
            period_start=period_start,
        )
    if not pending:
        return result

    def call(row: dict) -> _Outcome:
        row = {**row, "attempt_id": row["collection_id"]}
        if row["method"] == "payment_intent" and stripe_client is not None:
            return _stripe(stripe_client, row, clock.now())
        if row["method"] == "payment_link" and razorpay_client is not None:
            return _link(razorpay_client, row)
        return _Outcome(
            {
                "attempt_id": row["collection_id"],
                "status": "pending",
                "error_message": f"{row['provider']} is not configured: left pending",
            }
        )

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        outcomes = list(pool.map(call, pending))
    if after_calls is not None:
        after_calls()

    with engine.begin() as conn:
        result.results = _fetch(
            conn, "record_collections", results=json.dumps([_row(o.row) for o in outcomes]), now=clock.now()
        )
        record(
            conn,
            [
                AuditEntry(
                    "collection_attempt",
                    str(r["collection_id"]),
                    _ACTIONS[r["status"]],
                    actor=actor,
                    from_state="pending",
                    to_state=r["status"],
                    detail=_detail(r),
                )
                for r in result.results
                if r["status"] != "pending"
            ],
        )
        objects = [obj for o in outcomes for obj in o.objects]
        if objects:
            apply_observations(
                conn, [Seen(stripe_observation(obj)) for obj in objects], via="sync", actor=actor
            )
            settle_invoices(conn, actor=actor)
        result.notifications_queued += outbox.queue(
            conn, [_link_sent(r) for r in result.results if r["status"] == "link_sent"], at=now, actor=actor
        )
    if any(r["status"] == "failed" and r["method"] == "payment_intent" for r in result.results):
        # a decline opens the invoice's grace period now; dunning retries from it on its schedule
        grace = run_grace(engine, as_of=clock.now(), actor=actor)
        result.grace_opened = len(grace.opened)
        result.notifications_queued += grace.notifications_queued
    return result


_WALLET_CANDIDATES = sa.text("""
    SELECT b.invoice_id, b.number, b.organisation_id, b.currency, b.balance_minor
    FROM billing.invoice_balances b
    JOIN billing.organisations o ON o.organisation_id = b.organisation_id
    WHERE b.period_start = :period_start AND o.wallet_pays_invoices AND b.balance_minor > 0
      AND NOT EXISTS (SELECT 1 FROM billing.collection_attempts c WHERE c.invoice_id = b.invoice_id)
      AND NOT EXISTS (SELECT 1 FROM billing.invoice_wallet_payments p WHERE p.invoice_id = b.invoice_id)
    ORDER BY b.organisation_id, b.invoice_id
""")
_LOCK_WALLETS = sa.text("""
    SELECT organisation_id, currency, balance_minor FROM billing.wallets
    WHERE organisation_id = ANY(CAST(:orgs AS text[])) ORDER BY organisation_id FOR UPDATE
""")


def _pay_from_wallets(conn: sa.Connection, period_start: date, actor: str) -> list[dict]:
    """Where the catalog says so, what the wallet holds (never its debt limit) pays the invoice first:
    a wallet entry (reference invoice:<id>, once per invoice) and a row of billing.invoice_wallet_payments."""
    candidates = [
        dict(r) for r in conn.execute(_WALLET_CANDIDATES, {"period_start": period_start}).mappings()
    ]
    if not candidates:
        return []
    orgs = sorted({c["organisation_id"] for c in candidates})
    held = {  # what each wallet holds, its row locked until the transaction ends
        r.organisation_id: (r.currency, r.balance_minor) for r in conn.execute(_LOCK_WALLETS, {"orgs": orgs})
    }
    postings, paying = [], []
    for c in candidates:
        currency, balance = held.get(c["organisation_id"], (None, 0))
        amount = min(c["balance_minor"], balance) if currency == c["currency"] else 0
        if amount <= 0:
            continue
        held[c["organisation_id"]] = (currency, balance - amount)
        paying.append({**c, "amount_minor": amount})
        postings.append(
            wallet.Posting(
                c["organisation_id"],
                "adjustment",
                f"invoice:{c['invoice_id']}",
                -amount,
                c["currency"],
                {"invoice_id": c["invoice_id"], "number": c["number"], "reason": "invoice paid from wallet"},
            )
        )
    if not postings:
        return []
    results = wallet.post(conn, postings, actor=actor)
    paid = [
        {**p, "wallet_entry_id": r.entry_id}
        for p, r in zip(paying, results, strict=True)
        if r.outcome == "posted"
    ]
    if paid:
        conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_wallet_payments (invoice_id, organisation_id, wallet_entry_id,"
                " amount_minor, currency, paid_by)"
                " VALUES (:invoice_id, :organisation_id, :wallet_entry_id, :amount_minor, :currency, :actor)"
            ),
            [{**p, "actor": actor} for p in paid],
        )
        record(
            conn,
            [
                AuditEntry(
                    "invoice",
                    str(p["invoice_id"]),
                    "wallet_paid",
                    actor=actor,
                    from_state=str(p["balance_minor"]),
                    to_state=str(p["balance_minor"] - p["amount_minor"]),
                    detail={k: p[k] for k in ("number", "amount_minor", "currency", "wallet_entry_id")},
                )
                for p in paid
            ],
        )
    return [{k: p[k] for k in ("invoice_id", "number", "amount_minor", "currency")} for p in paid]


_ACTIONS = {"succeeded": "charged", "failed": "charge_failed", "link_sent": "link_sent"}


def _fetch(conn: sa.Connection, name: str, **params) -> list[dict]:
    return [dict(r) for r in conn.execute(sql_text(name), params).mappings()]


def _row(row: dict) -> dict:
    return {
        k: row.get(k)
        for k in (
            "attempt_id",
            "status",
            "provider_object_id",
            "provider_charge_id",
            "link_url",
            "error_code",
            "error_message",
        )
    }


def _stripe(client: stripe.StripeClient, row: dict, now: datetime) -> _Outcome:
    outcome = _charge(client, row, now, params=intent_params(row), key_field=KEY_FIELD)
    if outcome.row["status"] == "failed" and outcome.row.get("provider_charge_id"):
        # the declined charge goes to the ledger: it is what opens the grace period
        try:
            charge = client.v1.charges.retrieve(outcome.row["provider_charge_id"]).to_dict()
            outcome.objects = [charge]
            if outcome.row.get("provider_object_id"):
                intent = client.v1.payment_intents.retrieve(outcome.row["provider_object_id"]).to_dict()
                outcome.objects = [intent, charge]
        except stripe.StripeError as exc:  # the sync records it later; grace then opens from there
            log.warning("collection %s: declined charge not read (%s)", row["idempotency_key"], exc)
    return outcome


def _link(client: razorpay.Client, row: dict) -> _Outcome:
    out = {"attempt_id": row["collection_id"], "status": "pending"}
    try:
        found = client.payment_link.all({"reference_id": row["number"]}).get("payment_links") or []
        link = next(
            (x for x in found if (x.get("notes") or {}).get("invoice_id") == str(row["invoice_id"])), None
        )
        if link is None:
            link = client.payment_link.create(link_params(row))
        out |= {"status": "link_sent", "provider_object_id": link["id"], "link_url": link["short_url"]}
    except razorpay.errors.BadRequestError as exc:  # refused: final for this collection
        out |= {"status": "failed", "error_code": "BAD_REQUEST_ERROR", "error_message": str(exc)[:500]}
    except (razorpay.errors.ServerError, razorpay.errors.GatewayError, requests.RequestException) as exc:
        log.warning(
            "collection %s: outcome unknown (%s), repeated on the next run",
            row["idempotency_key"],
            type(exc).__name__,
        )
        out |= {"error_code": type(exc).__name__, "error_message": str(exc)[:500]}
    return _Outcome(out)


def _detail(row: dict) -> dict:
    keys = (
        "invoice_id",
        "number",
        "method",
        "idempotency_key",
        "amount_minor",
        "currency",
        "error_code",
        "error_message",
        "provider_object_id",
        "link_url",
    )
    return {k: row[k] for k in keys if row.get(k) is not None}


def _asked_to_pay(c: dict) -> outbox.Notification:
    return outbox.Notification(
        dedupe_key=f"collection_skipped:{c['collection_id']}",
        kind="payment_action_required",
        organisation_id=c["organisation_id"],
        subject=f"Invoice {c['number']} is waiting for your payment",
        body=(
            f"Invoice {c['number']} has {outbox.money(c['amount_minor'], c['currency'])} due and we cannot "
            "collect it automatically. Please pay it to avoid a restriction of your account."
        ),
        payload={
            "invoice_id": c["invoice_id"],
            "number": c["number"],
            "amount_minor": c["amount_minor"],
            "currency": c["currency"],
        },
    )


def _link_sent(r: dict) -> outbox.Notification:
    return outbox.Notification(
        dedupe_key=f"payment_link:{r['collection_id']}",
        kind="payment_action_required",
        organisation_id=r["organisation_id"],
        subject=f"Invoice {r['number']}: pay online",
        body=(
            f"Invoice {r['number']} has {outbox.money(r['amount_minor'], r['currency'])} due. Pay it at "
            f"{r['link_url']} before {outbox.when(r['link_expire_by'])}."
        ),
        payload={
            "invoice_id": r["invoice_id"],
            "number": r["number"],
            "amount_minor": r["amount_minor"],
            "currency": r["currency"],
            "payment_link": r["provider_object_id"],
            "url": r["link_url"],
        },
    )
