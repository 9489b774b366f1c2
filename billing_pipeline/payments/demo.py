"""Seed the FAKE Stripe and Razorpay servers with payments for a month's finalized invoices.

Most invoices are paid cleanly (by reference, by the customer/amount rule, after a failed attempt,
or refunded in full), some stay unpaid, and each discrepancy kind of payment_reconciliation is injected
at least once per provider, so finance can see what a finding looks like. The webhooks are delivered
signed to a running receiver (`webhook_url`), or stored in the inbox as the receiver would after
verifying them; a few are delivered twice and all in shuffled order. Deterministic for a seed.

After seeding: process the inbox (`payments`), sync the returned days (`stripe_sync`, `razorpay_sync`),
settle (`invoice_settlement`) and reconcile the days (`payment_reconciliation`): the findings are
exactly `DemoPayments.expected`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.fakes import razorpay_fake, stripe_fake
from billing_pipeline.payments.inbox import store_event
from billing_pipeline.settings import load_settings

# scenario -> the finding kinds it must produce (per provider); the clean scenarios produce none
INJECTED = {
    "lost_webhook": ("missing_internal",),
    "phantom_webhook": ("missing_at_provider",),
    "amount_changed": ("amount_mismatch",),
    "state_reverted": ("status_mismatch",),  # Stripe: a refund that failed later (charge and refund)
    "partial_payment": ("amount_mismatch",),
    "paid_twice": ("duplicate",),
}
CLEAN = ("by_reference", "by_reference", "by_reference", "by_rule", "retried", "refunded", "unpaid")


@dataclass(frozen=True)
class Expected:
    kind: str
    provider: str
    reference: str  # a provider object id, or an invoice number for invoice-level amount mismatches


@dataclass
class DemoPayments:
    days: list[date]
    expected: list[Expected] = field(default_factory=list)
    scenarios: dict[str, int] = field(default_factory=dict)  # "provider:scenario" -> invoices
    webhooks_delivered: int = 0


_INVOICES = sa.text("""
    SELECT i.invoice_id, i.number, i.organisation_id, i.currency, i.total_minor, o.provider,
           o.provider_customer_id
    FROM billing.invoices i JOIN billing.organisations o USING (organisation_id)
    WHERE i.period_start = :month AND o.provider IN ('stripe', 'razorpay')
      -- the month as finalized: a void the demo made later keeps its place, its replacement gets none
      AND (i.status = 'void' OR (i.status = 'finalized' AND NOT EXISTS (
          SELECT 1 FROM billing.invoice_replacements r WHERE r.replacement_invoice_id = i.invoice_id)))
      AND i.total_minor >= 100
    ORDER BY i.number
""")


class _Seeder:
    def __init__(self, rng: random.Random, days: Sequence[date], out: DemoPayments):
        self.rng, self.days, self.out = rng, list(days), out
        self.events: list[tuple[str, dict, str]] = []  # (provider, body, event id)

    def when(self) -> int:
        day = self.rng.choice(self.days)
        return int(datetime.combine(day, time(), tzinfo=UTC).timestamp()) + self.rng.randrange(
            8 * 3600, 20 * 3600
        )

    def expect(self, kind: str, provider: str, reference: str) -> None:
        self.out.expected.append(Expected(kind, provider, reference))

    def stripe_event(self, state, type_: str, obj: dict, *, deliver: bool = True) -> None:
        event = state.add_event(type_, obj, created=obj["created"])
        if deliver:
            self.events.append(("stripe", event, event["id"]))

    def razorpay_event(self, type_: str, *, created: int, **entities: dict) -> None:
        body = razorpay_fake.webhook_event(type_, created_at=created, **entities)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:14]
        self.events.append(("razorpay", body, f"evt_{digest}"))

    # -- Stripe ------------------------------------------------------------------------------------------
    def stripe(self, state, scenario: str, inv: Mapping) -> None:
        total, currency, customer = inv["total_minor"], inv["currency"].lower(), inv["provider_customer_id"]
        ref = {"invoice_id": str(inv["invoice_id"]), "invoice_number": inv["number"]}
        t = self.when()

        def charge(amount=total, metadata=ref, created=None, into=state, **kw):
            fee = (amount * 29 + 500) // 1000 + 30 if kw.get("status", "succeeded") == "succeeded" else None
            return into.add_charge(
                amount, currency, customer=customer, metadata=metadata, created=created or t, fee=fee, **kw
            )

        if scenario == "unpaid":
            return
        if scenario == "retried":
            self.stripe_event(state, "charge.failed", charge(status="failed", failure_code="card_declined"))
            t += 3600
        if scenario == "lost_webhook":
            ch = charge()
            self.stripe_event(state, "charge.succeeded", ch, deliver=False)
            self.expect("missing_internal", "stripe", ch["id"])
        elif scenario == "phantom_webhook":  # an object the provider's lists never show
            ch = charge(into=stripe_fake.FakeStripeState(), id=f"ch_demo_phantom_{inv['invoice_id']}")
            self.stripe_event(state, "charge.succeeded", ch)
            self.expect("missing_at_provider", "stripe", ch["id"])
        elif scenario == "amount_changed":
            ch = charge()
            self.stripe_event(state, "charge.succeeded", ch)
            state.update("charges", ch["id"], amount=total - max(total // 10, 1))
            self.expect("amount_mismatch", "stripe", ch["id"])
        elif scenario == "state_reverted":  # refunded per the webhooks; the refund failed afterwards
            ch = charge()
            self.stripe_event(state, "charge.succeeded", ch)
            refund = state.add_refund(ch["id"], total, status="failed", created=t + 600)
            self.stripe_event(state, "charge.refunded", {**ch, "amount_refunded": total, "refunded": True})
            self.stripe_event(state, "refund.created", {**refund, "status": "succeeded"})
            self.expect("status_mismatch", "stripe", ch["id"])
            self.expect("status_mismatch", "stripe", refund["id"])
        elif scenario == "partial_payment":
            self.stripe_event(state, "charge.succeeded", charge(amount=total // 2))
            self.expect("amount_mismatch", "stripe", inv["number"])
        elif scenario == "paid_twice":
            self.stripe_event(state, "charge.succeeded", charge())
            second = charge(created=t + 7200)
            self.stripe_event(state, "charge.succeeded", second)
            self.expect("duplicate", "stripe", second["id"])
        elif scenario == "by_rule":  # no reference: matched on customer, amount and window
            self.stripe_event(state, "charge.succeeded", charge(metadata={}))
        elif scenario == "refunded":
            ch = charge()
            self.stripe_event(state, "charge.succeeded", ch)
            refund = state.add_refund(ch["id"], created=t + 600)
            self.stripe_event(state, "charge.refunded", state.get("charges", ch["id"]))
            self.stripe_event(state, "refund.created", refund)
        else:  # by_reference, retried
            self.stripe_event(state, "charge.succeeded", charge())

    # -- Razorpay ----------------------------------------------------------------------------------------
    def razorpay(self, state, scenario: str, inv: Mapping) -> None:
        total, customer = inv["total_minor"], inv["provider_customer_id"]
        notes = {"invoice_id": str(inv["invoice_id"]), "invoice_number": inv["number"]}
        t = self.when()
        if scenario == "unpaid":
            return
        order = (
            None
            if scenario in ("by_rule", "phantom_webhook")
            else state.add_order(total, notes=notes, created_at=t - 60, receipt=inv["number"])
        )

        def pay(amount=total, created=t, into=state, **kw):
            return into.add_payment(
                amount,
                created_at=created,
                customer_id=customer,
                order_id=order["id"] if order else None,
                **kw,
            )

        def paid(payment):
            self.razorpay_event(
                "order.paid",
                created=payment["created_at"],
                payment=payment,
                order=state.get("orders", order["id"]),
            )

        if scenario == "retried":  # a late authorization of a failed payment, then its capture
            p = pay(status="failed")
            self.razorpay_event("payment.failed", created=t, payment=p)
            self.razorpay_event("payment.authorized", created=t + 300, payment={**p, "status": "authorized"})
            fee = (total * 2 + 50) // 100
            state.update(
                "payments",
                p["id"],
                status="captured",
                captured=True,
                error_code=None,
                error_description=None,
                fee=fee,
                tax=(fee * 18 + 50) // 100,
            )
            paid(state.get("payments", p["id"]))
        elif scenario == "lost_webhook":
            self.expect("missing_internal", "razorpay", pay()["id"])
        elif scenario == "phantom_webhook":  # an object the provider's lists never show
            p = pay(
                into=razorpay_fake.FakeRazorpayState(), notes=notes, id=f"pay_DEMOPHANTOM{inv['invoice_id']}"
            )
            self.razorpay_event("payment.captured", created=t, payment=p)
            self.expect("missing_at_provider", "razorpay", p["id"])
        elif scenario == "amount_changed":
            p = pay()
            paid(p)
            state.update("payments", p["id"], amount=total - max(total // 10, 1))
            self.expect("amount_mismatch", "razorpay", p["id"])
        elif scenario == "state_reverted":  # captured per the webhook; the provider still says authorized
            p = pay(status="authorized")
            self.razorpay_event(
                "payment.captured", created=t, payment={**p, "status": "captured", "captured": True}
            )
            self.expect("status_mismatch", "razorpay", p["id"])
        elif scenario == "partial_payment":
            paid(pay(amount=total // 2))
            self.expect("amount_mismatch", "razorpay", inv["number"])
        elif scenario == "paid_twice":  # two captured payments on one order
            paid(pay())
            second = pay(created=t + 7200)
            paid(second)
            self.expect("duplicate", "razorpay", second["id"])
        elif scenario == "by_rule":
            self.razorpay_event("payment.captured", created=t, payment=pay())
        elif scenario == "refunded":
            p = pay()
            paid(p)
            refund = state.add_refund(p["id"], created_at=t + 600)
            self.razorpay_event(
                "refund.processed", created=t + 600, refund=refund, payment=state.get("payments", p["id"])
            )
        else:
            paid(pay())


def _deliver(
    events: list[tuple[str, dict, str]], engine: Engine, webhook_url: str | None, secrets: Mapping[str, str]
) -> int:
    if webhook_url is None:
        with engine.begin() as conn:
            for provider, body, event_id in events:
                store_event(
                    conn,
                    provider,
                    event_id,
                    body.get("type") or body["event"],
                    json.dumps(body, separators=(",", ":")).encode(),
                )
        return len(events)
    base = webhook_url.rstrip("/")
    for provider, body, event_id in events:
        if provider == "stripe":
            answer = stripe_fake.deliver_webhook(f"{base}/webhooks/stripe", body, secrets["stripe"])
        else:
            answer = razorpay_fake.deliver_webhook(
                f"{base}/webhooks/razorpay", body, secrets["razorpay"], event_id
            )
        answer.raise_for_status()
    return len(events)


def default_days(today: date | None = None) -> list[date]:
    today = today or datetime.now(UTC).date()
    return [today - timedelta(days=n) for n in (3, 2, 1)]


def seed_demo_payments(
    engine: Engine,
    stripe_state: stripe_fake.FakeStripeState,
    razorpay_state: razorpay_fake.FakeRazorpayState,
    *,
    month: date,
    days: Sequence[date] | None = None,
    webhook_url: str | None = None,
    injections: Mapping[str, int] | None = None,
    seed: int = 7,
) -> DemoPayments:
    """Seed both fakes with payments for `month`'s finalized invoices; returns the days and the findings.

    `days` (default: the three days before today, UTC) are when the payments happen. `injections`
    (default: 1 of each scenario in INJECTED) applies per provider. Webhooks go signed to
    `webhook_url`/webhooks/<provider> (secrets from the settings), or straight into the inbox when None.
    Raises ValueError when a provider has too few invoices for its injections.
    """
    counts = dict.fromkeys(INJECTED, 1) if injections is None else dict(injections)
    unknown = set(counts) - set(INJECTED)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {sorted(INJECTED)}")
    rng = random.Random(seed)
    out = DemoPayments(sorted(days or default_days()))
    seeder = _Seeder(rng, out.days, out)
    with engine.connect() as conn:
        invoices = [dict(r) for r in conn.execute(_INVOICES, {"month": month}).mappings()]
    for provider, state, apply in (
        ("stripe", stripe_state, seeder.stripe),
        ("razorpay", razorpay_state, seeder.razorpay),
    ):
        mine = [i for i in invoices if i["provider"] == provider]
        injected = [s for s, n in counts.items() for _ in range(n)]
        if len(mine) < len(injected):
            raise ValueError(
                f"{provider}: {len(mine)} finalized invoices of {month:%Y-%m} with a total of at "
                f"least 100 minor units; {len(injected)} needed for the injected scenarios"
            )
        rng.shuffle(mine)
        plan = injected + [CLEAN[n % len(CLEAN)] for n in range(len(mine) - len(injected))]
        for scenario, invoice in zip(plan, mine, strict=True):
            apply(state, scenario, invoice)
            key = f"{provider}:{scenario}"
            out.scenarios[key] = out.scenarios.get(key, 0) + 1
    events = seeder.events + rng.sample(seeder.events, len(seeder.events) // 20)  # some delivered twice
    rng.shuffle(events)
    settings = load_settings()
    secrets = {"stripe": settings.stripe_webhook_secret, "razorpay": settings.razorpay_webhook_secret}
    out.webhooks_delivered = _deliver(
        events, engine, webhook_url, {k: v.get_secret_value() for k, v in secrets.items() if v}
    )
    return out
