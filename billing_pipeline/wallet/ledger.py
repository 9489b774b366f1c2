"""The prepaid wallet ledger: post top-ups, charges and adjustments atomically against a debt limit.

Tables (sql/0050_wallets.sql): `billing.wallets` (one balance row per organisation, in the
organisation's currency), `billing.wallet_entries` (append-only; balance = sum of entries, kept by a
database trigger that also refuses any statement taking a debited wallet below -debt_limit),
`billing.wallet_refusals` (refused debits, for finance) and the view `billing.wallet_status`
(balance, what is still available, `needs_recharge`).

How a batch is posted (`post`), in the caller's transaction:
  1. open the wallets that do not exist yet (balance 0, the organisation's currency);
  2. lock the batch's wallet rows, in organisation order (FOR UPDATE: a concurrent poster from any
     process waits here, so balances cannot move between the check and the write);
  3. one statement (sql/post_entries.sql) decides every entry, inserts the posted ones and the
     refusals, and returns each outcome;
  4. the audit log gets, in the same transaction, one entry per wallet, kind and outcome of the batch
     (balance before and after, count, amount, references) and one when a wallet crosses its recharge
     threshold either way.
Idempotency: (kind, reference) is unique; posting it again returns `duplicate` and the existing entry.
Amounts are integer minor units of the wallet's currency; callers round once before (money.to_minor).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from billing_pipeline import sql_files

from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.money import is_valid_currency

KINDS = ("top_up", "call_charge", "adjustment")
Outcome = Literal["posted", "duplicate", "refused"]

_POST = sql_files.statement("billing_pipeline.wallet", "post_entries")
_OPEN = sa.text(
    "INSERT INTO billing.wallets (organisation_id, currency)"
    " SELECT organisation_id, currency FROM billing.organisations"
    " WHERE organisation_id = ANY(CAST(:orgs AS text[]))"
    " ON CONFLICT (organisation_id) DO NOTHING"
)
_LOCK = sa.text(
    "SELECT organisation_id FROM billing.wallets WHERE organisation_id = ANY(CAST(:orgs AS text[]))"
    " ORDER BY organisation_id FOR UPDATE"
)


@dataclass(frozen=True)
class Posting:
    organisation_id: str
    kind: str  # top_up | call_charge | adjustment
    reference: str  # idempotency key within the kind: call id, payment id, adjustment key
    amount_minor: int  # signed: credit > 0, debit < 0
    currency: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PostingResult:
    posting: Posting
    outcome: Outcome
    reason: str | None  # refused: debt_limit | currency_mismatch
    entry_id: int | None  # the new entry, or for a duplicate the one already there
    refusal_id: int | None
    balance_minor: int  # the wallet's balance once this posting is decided (unchanged unless posted)
    wallet_currency: str
    needs_recharge: bool  # the wallet ends the batch under its recharge threshold

    @property
    def refused(self) -> bool:
        return self.outcome == "refused"


@dataclass(frozen=True)
class WalletStatus:
    organisation_id: str
    currency: str
    balance_minor: int
    debt_limit_minor: int
    available_minor: int
    recharge_threshold_minor: int
    needs_recharge: bool


def _problems(postings: Sequence[Posting]) -> list[str]:
    problems, seen = [], set()
    for i, p in enumerate(postings):
        where = f"posting {i} ({p.kind} {p.reference!r})"
        if p.kind not in KINDS:
            problems.append(f"{where}: kind must be one of {', '.join(KINDS)}")
        if not p.organisation_id or not p.reference:
            problems.append(f"{where}: organisation_id and reference are required")
        if isinstance(p.amount_minor, bool) or not isinstance(p.amount_minor, int) or p.amount_minor == 0:
            problems.append(
                f"{where}: amount_minor must be a non-zero int of minor units, got {p.amount_minor!r}"
            )
        elif p.kind == "top_up" and p.amount_minor < 0:
            problems.append(f"{where}: a top-up is a credit (amount_minor > 0)")
        elif p.kind == "call_charge" and p.amount_minor > 0:
            problems.append(f"{where}: a call charge is a debit (amount_minor < 0)")
        if not is_valid_currency(p.currency):
            problems.append(f"{where}: {p.currency!r} is not a supported ISO 4217 code")
        if (p.kind, p.reference) in seen:
            problems.append(f"{where}: the same kind and reference appear twice in one batch")
        seen.add((p.kind, p.reference))
    return problems


def post(conn: sa.Connection, postings: Sequence[Posting], *, actor: str) -> list[PostingResult]:
    """Post `postings` atomically in the caller's transaction; results in the same order.

    Raises ValueError for malformed postings or organisations absent from billing.organisations
    (nothing is written then). Wallet locks are held until the caller's transaction ends.
    """
    if not postings:
        return []
    problems = _problems(postings)
    orgs = sorted({p.organisation_id for p in postings})
    if not problems:
        conn.execute(_OPEN, {"orgs": orgs})
        locked = set(conn.execute(_LOCK, {"orgs": orgs}).scalars())
        problems = [f"no organisation {org!r} in billing.organisations" for org in orgs if org not in locked]
    if problems:
        raise ValueError("cannot post wallet entries:\n" + "\n".join(f"  - {p}" for p in problems))

    rows = conn.execute(
        _POST,
        {
            "ord": list(range(len(postings))),
            "organisation_id": [p.organisation_id for p in postings],
            "kind": [p.kind for p in postings],
            "reference": [p.reference for p in postings],
            "amount_minor": [p.amount_minor for p in postings],
            "currency": [p.currency for p in postings],
            "detail": [json.dumps(dict(p.detail), default=str) for p in postings],
            "actor": actor,
        },
    ).all()
    results = [
        PostingResult(
            posting=postings[row.ord],
            outcome=row.outcome,
            reason=row.reason,
            entry_id=row.entry_id,
            refusal_id=row.refusal_id,
            balance_minor=row.balance_minor,
            wallet_currency=row.wallet_currency,
            needs_recharge=row.wallet_after_minor < row.recharge_threshold_minor,
        )
        for row in rows
    ]
    record(conn, _audit(rows, postings, actor))
    return results


def _audit(rows: Sequence[sa.Row], postings: Sequence[Posting], actor: str) -> list[AuditEntry]:
    """One audit entry per wallet, kind and outcome of the batch (the ledger and the refusals table hold
    each line), plus one when the wallet crosses its recharge threshold; duplicates change nothing."""
    groups: dict[tuple[str, str, str], list[sa.Row]] = {}
    for row in rows:
        if row.outcome != "duplicate":
            p = postings[row.ord]
            groups.setdefault((p.organisation_id, p.kind, row.outcome), []).append(row)
    entries, last = [], {}
    for (org, kind, outcome), group in groups.items():
        row = last[org] = group[-1]
        refs = [postings[r.ord].reference for r in group]
        entries.append(
            AuditEntry(
                entity_type="wallet",
                entity_id=org,
                action=kind if outcome == "posted" else f"{kind}_refused",
                actor=actor,
                from_state=str(row.wallet_before_minor),
                to_state=str(row.wallet_after_minor),
                detail={
                    "currency": row.wallet_currency,
                    "count": len(group),
                    "amount_minor": sum(postings[r.ord].amount_minor for r in group),
                    "references": refs[:20],  # the ledger / billing.wallet_refusals have them all
                    "reasons": sorted({r.reason for r in group if r.reason}),
                    **(postings[group[0].ord].detail if len(group) == 1 else {}),
                },
            )
        )
    for org, row in last.items():
        before = row.wallet_before_minor < row.recharge_threshold_minor
        after = row.wallet_after_minor < row.recharge_threshold_minor
        if before != after:
            entries.append(
                AuditEntry(
                    entity_type="wallet",
                    entity_id=org,
                    action="needs_recharge" if after else "recharged",
                    actor=actor,
                    from_state="needs_recharge" if before else "funded",
                    to_state="needs_recharge" if after else "funded",
                    detail={
                        "balance_minor": row.wallet_after_minor,
                        "recharge_threshold_minor": row.recharge_threshold_minor,
                        "currency": row.wallet_currency,
                    },
                )
            )
    return entries


def deduct(
    conn: sa.Connection,
    organisation_id: str,
    amount_minor: int,
    currency: str,
    reference: str,
    *,
    actor: str,
    kind: str = "call_charge",
    detail: Mapping[str, Any] | None = None,
) -> PostingResult:
    """Take `amount_minor` (> 0) from the wallet unless that would pass the debt limit (then `refused`,
    balance unchanged, a billing.wallet_refusals row). Idempotent per (kind, reference)."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValueError(f"a deduction is a positive int of minor units, got {amount_minor!r}")
    posting = Posting(organisation_id, kind, reference, -amount_minor, currency, detail or {})
    return post(conn, [posting], actor=actor)[0]


def top_up(
    conn: sa.Connection,
    organisation_id: str,
    amount_minor: int,
    currency: str,
    reference: str,
    *,
    actor: str,
    detail: Mapping[str, Any] | None = None,
) -> PostingResult:
    """Credit the wallet (a paid top-up; `reference` is its payment id). Idempotent per reference."""
    return post(
        conn,
        [Posting(organisation_id, "top_up", reference, amount_minor, currency, detail or {})],
        actor=actor,
    )[0]


def adjust(
    conn: sa.Connection,
    organisation_id: str,
    amount_minor: int,
    currency: str,
    reference: str,
    *,
    actor: str,
    reason: str,
) -> PostingResult:
    """A manual correction (credit > 0 or debit < 0) with its reason; debits respect the debt limit."""
    if not reason.strip():
        raise ValueError("an adjustment needs a reason")
    posting = Posting(organisation_id, "adjustment", reference, amount_minor, currency, {"reason": reason})
    return post(conn, [posting], actor=actor)[0]


def status(conn: sa.Connection, organisation_id: str) -> WalletStatus:
    """The organisation's wallet as finance sees it (billing.wallet_status); ValueError if unknown."""
    row = conn.execute(
        sa.text(
            "SELECT organisation_id, currency, balance_minor, debt_limit_minor, available_minor,"
            " recharge_threshold_minor, needs_recharge FROM billing.wallet_status"
            " WHERE organisation_id = :org"
        ),
        {"org": organisation_id},
    ).first()
    if row is None:
        raise ValueError(f"no organisation {organisation_id!r} in billing.organisations")
    return WalletStatus(**row._mapping)


def needs_recharge(conn: sa.Connection, organisation_id: str) -> bool:
    """True when the balance is under the organisation's recharge_threshold_minor."""
    return status(conn, organisation_id).needs_recharge
