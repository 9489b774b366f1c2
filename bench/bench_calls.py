"""Charging voice calls to wallets (issue 7), against baselines measured in the same run.

Figures, for N provider calls (default 20,000 over 10 days and 50 organisations) whose webhooks never
came:
  - recovered_calls_per_s: call reconciliation (recover + charge + findings + summary, set-based, one
    transaction) against
      - per_call_deduct: one ledger.deduct per call, each in its own transaction (a sample), and
      - bare_entries_insert: one INSERT ... SELECT of the same charges into billing.wallet_entries
        (the balance trigger, no checks, no call rows): the floor of any ledger write;
  - webhook_events_per_s: N end-of-call reports applied from billing.webhook_inbox by the inbox
    framework (batches of 500) against the same per_call_deduct baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402

from billing_pipeline.calls.apply import EVENT_TYPE, event_id  # noqa: E402
from billing_pipeline.calls.reconcile import reconcile_days  # noqa: E402
from billing_pipeline.calls.sync import replace_provider_calls  # noqa: E402
from billing_pipeline.catalog import apply_catalog, parse_catalog  # noqa: E402
from billing_pipeline.fakes.vapi_fake import FakeVapiState, end_of_call_report  # noqa: E402
from billing_pipeline.payments.inbox import process_inbox  # noqa: E402
from billing_pipeline.wallet import ledger  # noqa: E402
from billing_pipeline.warehouse import get_engine  # noqa: E402

DAY = date(2026, 9, 1)
DAYS = 10
ORGS = 50
CATALOG = """
billable_metrics: [{code: calls, name: Calls, aggregation: count}]
plans: [{code: p, name: P, currency: USD, charges: [{metric: calls, model: standard, unit_amount: 0.001}]}]
organisations: [%s]
""" % ", ".join(f"{{id: org_{i}, name: O{i}, plan: p, currency: USD}}" for i in range(ORGS))


def fake_calls(n: int, prefix: str) -> list[dict]:
    state = FakeVapiState()
    start = datetime.combine(DAY, datetime.min.time(), UTC)
    step = timedelta(days=DAYS) / n
    return [
        state.add_call(
            start + step * i,
            call_id=f"{prefix}-{uuid.UUID(int=i)}",
            cost=round(0.05 + (i % 97) / 100, 4),
            metadata={"organisation_id": f"org_{i % ORGS}"},
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--per-call-sample", type=int, default=2_000)
    args = parser.parse_args()
    n = args.calls
    with bench_home() as settings:
        engine = get_engine(settings)
        apply_catalog(engine, parse_catalog(CATALOG), source="bench", applied_by="bench")
        with engine.begin() as conn:
            ledger.post(
                conn,
                [ledger.Posting(f"org_{i}", "top_up", f"fund_{i}", 10**12, "USD") for i in range(ORGS)],
                actor="bench",
            )
        start = datetime.combine(DAY, datetime.min.time(), UTC)
        end = start + timedelta(days=DAYS)
        with engine.begin() as conn:
            replace_provider_calls(conn, start, end, fake_calls(n, "recon"))

        with Timer() as recon, engine.begin() as conn:
            result = reconcile_days(conn, DAY, DAY + timedelta(days=DAYS), actor="bench")
        assert result.total("recovered_calls") == n and result.charges.counts["charged"] == n

        sample = fake_calls(args.per_call_sample, "loop")
        with Timer() as loop:
            for call in sample:
                with engine.begin() as conn:
                    ledger.deduct(
                        conn, call["metadata"]["organisation_id"], 10, "USD", call["id"], actor="bench"
                    )
        per_call = len(sample) / loop.seconds

        with Timer() as bare, engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO billing.wallet_entries"
                    " (organisation_id, kind, reference, amount_minor, currency, actor)"
                    " SELECT organisation_id, 'adjustment', 'bare-' || call_id, -cost_minor, 'USD', 'bench'"
                    " FROM billing.calls WHERE cost_minor > 0"
                )
            )

        report("calls", "recovered_calls_per_s", n / recon.seconds, "per_call_deduct", per_call)
        report("calls", "recovered_calls_per_s", n / recon.seconds, "bare_entries_insert", n / bare.seconds)

        hooks = fake_calls(n, "hook")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO billing.webhook_inbox (provider, event_id, event_type, payload, raw_body)"
                    " SELECT 'vapi', e, :t, CAST(p AS jsonb), convert_to(p, 'UTF8')"
                    " FROM unnest(CAST(:ids AS text[]), CAST(:payloads AS text[])) AS x (e, p)"
                ),
                {
                    "t": EVENT_TYPE,
                    "ids": [event_id(c["id"]) for c in hooks],
                    "payloads": [json.dumps(end_of_call_report(c)) for c in hooks],
                },
            )
        with Timer() as webhooks:
            applied = process_inbox(engine, ["vapi"], actor="bench")
        assert applied.processed_total == n, applied
        report("calls", "webhook_events_per_s", n / webhooks.seconds, "per_call_deduct", per_call)


if __name__ == "__main__":
    main()
