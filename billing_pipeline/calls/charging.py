"""Charge calls to their organisations' wallets: set-based, at most once per call.

A call is charged when it has ended, its cost is known and its organisation is known
(charge_status 'pending' in billing.calls). The calls are locked (FOR UPDATE, in call id order, so
every charging path locks in the same order and a webhook racing the reconciliation waits), posted to
the wallets in one batch in the order they happened (wallet.ledger.post: a charge that would pass the
debt limit is refused, and so are that organisation's later calls in the same batch), and marked
charged or refused in one UPDATE, all in the caller's transaction. The wallet entry's reference is
the call id, so even a second charging path could not charge a call twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from billing_pipeline.calls import arrays
from billing_pipeline.wallet import ledger

CURRENCY = "USD"  # Vapi bills in USD

_LOCK_CHARGEABLE = sa.text(
    """
    SELECT call_id, organisation_id, cost_usd, cost_minor, created_at
    FROM billing.calls
    WHERE call_id = ANY(CAST(:ids AS text[]))
      AND charge_status = 'pending' AND status = 'ended' AND cost_minor IS NOT NULL
    ORDER BY call_id
    FOR UPDATE
    """
)
_MARK = sa.text(
    """
    UPDATE billing.calls c
    SET charge_status = u.charge_status, charge_entry_id = u.entry_id, charged_minor = u.charged_minor,
        charge_detail = u.detail, charged_at = now(), updated_at = now()
    FROM unnest(CAST(:call_id AS text[]), CAST(:charge_status AS text[]), CAST(:entry_id AS bigint[]),
                CAST(:charged_minor AS bigint[]), CAST(:detail AS text[]))
         AS u (call_id, charge_status, entry_id, charged_minor, detail)
    WHERE c.call_id = u.call_id
    """
)


@dataclass
class ChargeSummary:
    statuses: dict[str, str] = field(default_factory=dict)  # call id -> charged | refused
    charged_minor: int = 0  # USD cents taken from wallets

    @property
    def counts(self) -> Counter:
        return Counter(self.statuses.values())


def charge_calls(conn: sa.Connection, call_ids: Sequence[str], *, actor: str) -> ChargeSummary:
    """Charge the chargeable calls among `call_ids` (others are left as they are)."""
    summary = ChargeSummary()
    if not call_ids:
        return summary
    calls = conn.execute(_LOCK_CHARGEABLE, {"ids": list(call_ids)}).all()
    calls.sort(key=lambda c: (c.created_at, c.call_id))  # charged in the order they happened
    billable = [c for c in calls if c.cost_minor > 0]
    results = ledger.post(
        conn,
        [
            ledger.Posting(
                c.organisation_id,
                "call_charge",
                c.call_id,
                -c.cost_minor,
                CURRENCY,
                {"cost_usd": str(c.cost_usd), "call_created_at": c.created_at.isoformat()},
            )
            for c in billable
        ],
        actor=actor,
    )
    marks = [
        (c.call_id, "charged", None, 0, "cost rounds to 0 cents: nothing to charge")
        for c in calls
        if c.cost_minor == 0
    ]
    for call, result in zip(billable, results, strict=True):
        if result.refused:
            detail = (
                f"wallet refused the charge ({result.reason}); billing.wallet_refusals {result.refusal_id}"
            )
            marks.append((call.call_id, "refused", None, None, detail))
        else:  # posted, or already posted for this call id (duplicate): charged once either way
            marks.append((call.call_id, "charged", result.entry_id, call.cost_minor, None))
            summary.charged_minor += call.cost_minor if result.outcome == "posted" else 0
    if marks:
        conn.execute(
            _MARK, arrays(("call_id", "charge_status", "entry_id", "charged_minor", "detail"), marks)
        )
    summary.statuses = {m[0]: m[1] for m in marks}
    return summary
