"""Demo calls: a month of Vapi calls in the FAKE Vapi server, a few of them without their webhook.

`seed_demo_calls` is deterministic for a (month, organisations, seed): the same call ids, times and
costs every time. The calls whose end-of-call webhook is "lost" are what `call_reconciliation`
recovers; with 2-5% lost, a few days fall under the 95% webhook reliability and warn.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import httpx
import sqlalchemy as sa

from billing_pipeline.fakes.vapi_fake import FakeVapiState, end_of_call_report
from billing_pipeline.wallet import ledger

_HOUR_WEIGHTS = [0.2 + math.exp(-((h - 16) ** 2) / 20) for h in range(24)]  # busy afternoons UTC


@dataclass(frozen=True)
class DemoCalls:
    calls: list[dict]  # as the fake serves them from GET /call
    webhook_call_ids: list[str]  # calls whose end-of-call report is (or was) delivered
    missing_webhook_ids: list[str]  # calls whose webhook never comes: only reconciliation finds them


def seed_demo_calls(
    state: FakeVapiState,
    month: date,
    organisation_ids: Sequence[str],
    *,
    calls_per_day: int = 40,
    missing_webhook_share: float = 0.03,
    seed: int = 7,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> DemoCalls:
    """Add a month of ended calls to `state`, spread over `organisation_ids` (metadata.organisation_id).

    `missing_webhook_share` of the calls (rounded) never get a webhook. With `webhook_url` and
    `webhook_secret` (the API's VAPI_WEBHOOK_SECRET), the other calls' end-of-call reports are POSTed
    there now, as Vapi would (X-Vapi-Secret); any answer other than 2xx raises. Without them, nothing is
    delivered and `webhook_call_ids` says which reports to deliver.
    """
    if not organisation_ids:
        raise ValueError("seed_demo_calls needs at least one organisation id")
    if not 0 <= missing_webhook_share <= 1:
        raise ValueError(f"missing_webhook_share must be within 0..1, got {missing_webhook_share}")
    if (webhook_url is None) != (webhook_secret is None):
        raise ValueError("give both webhook_url and webhook_secret, or neither")
    rng = random.Random(f"{seed}:{month.isoformat()}")
    weights = [1 / (i + 1) for i in range(len(organisation_ids))]  # a few busy organisations, a long tail
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
    calls = []
    for day in range((end - start).days):
        for _ in range(rng.randint(calls_per_day * 7 // 10, calls_per_day * 13 // 10)):
            hour = rng.choices(range(24), _HOUR_WEIGHTS)[0]
            created = start + timedelta(days=day, hours=hour, milliseconds=rng.randrange(3_600_000))
            duration = rng.uniform(15, 900)
            calls.append(
                state.add_call(
                    created,
                    call_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    duration_s=duration,
                    cost=round(duration / 60 * rng.uniform(0.05, 0.14), 4),  # USD, a float as Vapi sends it
                    ended_reason=rng.choice(
                        ["customer-ended-call", "assistant-ended-call", "silence-timed-out"]
                    ),
                    metadata={"organisation_id": rng.choices(organisation_ids, weights)[0]},
                )
            )
    missing = set(rng.sample([c["id"] for c in calls], round(len(calls) * missing_webhook_share)))
    delivered = [c for c in calls if c["id"] not in missing]
    if webhook_url is not None:
        with httpx.Client(timeout=30, headers={"X-Vapi-Secret": webhook_secret}) as client:
            for call in delivered:
                response = client.post(webhook_url, json=end_of_call_report(call))
                if response.status_code >= 300:
                    raise RuntimeError(
                        f"webhook for call {call['id']} answered {response.status_code}: "
                        f"{response.text[:200]}"
                    )
    return DemoCalls(calls, [c["id"] for c in delivered], sorted(missing))


def top_up_demo_wallets(
    conn: sa.Connection, organisation_ids: Sequence[str], amount_minor: int, *, actor: str
) -> int:
    """Credit each listed USD organisation's wallet once (reference `demo-top-up:<org>`); returns the
    number of new top-ups. Non-USD organisations are skipped: calls can only be charged to USD wallets."""
    usd = (
        conn.execute(
            sa.text(
                "SELECT organisation_id FROM billing.organisations"
                " WHERE organisation_id = ANY(CAST(:orgs AS text[])) AND currency = 'USD'"
                " ORDER BY organisation_id"
            ),
            {"orgs": list(organisation_ids)},
        )
        .scalars()
        .all()
    )
    postings = [ledger.Posting(org, "top_up", f"demo-top-up:{org}", amount_minor, "USD") for org in usd]
    return sum(r.outcome == "posted" for r in ledger.post(conn, postings, actor=actor))
