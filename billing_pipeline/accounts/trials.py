"""Trials: the ones that ended are closed, the ones ending tomorrow get a reminder.

As of an instant T (the end of the accounts partition):
- every organisation still `trialing` whose trial ended at or before T leaves its trial: it stays on
  its plan as `active` when it can be charged (a provider and a customer id there), otherwise it is
  `downgraded`. Audited (entity organisation, action trial_ended), announced (trial_ended).
- every trial still running that ends before the end of the UTC day after T's day gets a reminder
  (trial_ending): the daily run early on day D reminds the trials ending on day D or D+1, so each trial
  is reminded on the day before it ends (or on its last day, when it was shorter than that).
Run twice as of the same instant, nothing changes the second time and nothing is queued twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone

from sqlalchemy.engine import Engine

from billing_pipeline import accounts
from billing_pipeline.accounts import outbox
from billing_pipeline.audit import AuditEntry, record


@dataclass
class TrialResult:
    ended: list[dict] = field(
        default_factory=list
    )  # organisation_id, status (active|downgraded), trial_ended_at
    reminders: list[dict] = field(default_factory=list)  # organisation_id, trial_ends_at
    notifications_queued: int = 0

    @property
    def downgraded(self) -> int:
        return sum(1 for e in self.ended if e["status"] == "downgraded")


def remind_until(as_of: datetime) -> datetime:
    """The end of the UTC day after as_of's day."""
    return datetime.combine(as_of.astimezone(timezone.utc).date(), time.min, timezone.utc) + timedelta(days=2)


def run_trials(engine: Engine, *, as_of: datetime, actor: str) -> TrialResult:
    result = TrialResult()
    with engine.begin() as conn:
        accounts.lock(conn)
        result.ended = accounts.fetch(conn, "end_trials", {"as_of": as_of})
        result.reminders = accounts.fetch(
            conn, "trials_ending", {"as_of": as_of, "until": remind_until(as_of)}
        )
        record(
            conn,
            [
                AuditEntry(
                    "organisation",
                    e["organisation_id"],
                    "trial_ended",
                    actor=actor,
                    from_state="trialing",
                    to_state=e["status"],
                    detail={"trial_ended_at": e["trial_ended_at"], "as_of": as_of, "can_pay": e["can_pay"]},
                )
                for e in result.ended
            ],
        )
        result.notifications_queued = outbox.queue(
            conn,
            [*map(_ended_notice, result.ended), *map(_reminder, result.reminders)],
            at=as_of,
            actor=actor,
        )
    return result


def _reminder(org: dict) -> outbox.Notification:
    ends = org["trial_ends_at"]
    after = (
        "Your plan continues after that and is charged to your payment method on file."
        if org["can_pay"]
        else "Add a payment method before then to keep your plan; without one the account is downgraded."
    )
    return outbox.Notification(
        dedupe_key=f"trial_ending:{org['organisation_id']}:{outbox.utc_iso(ends)}",
        kind="trial_ending",
        organisation_id=org["organisation_id"],
        subject=f"Your trial ends on {outbox.when(ends)}",
        body=f"The trial of {org['name']} ({org['plan_code']} plan) ends on {outbox.when(ends)}. {after}",
        payload={"trial_ends_at": outbox.utc_iso(ends), "plan_code": org["plan_code"]},
    )


def _ended_notice(org: dict) -> outbox.Notification:
    ended = org["trial_ended_at"]
    outcome = (
        "Your plan continues and is charged to your payment method on file."
        if org["status"] == "active"
        else "The account was downgraded: add a payment method to get your plan back."
    )
    return outbox.Notification(
        dedupe_key=f"trial_ended:{org['organisation_id']}:{outbox.utc_iso(ended)}",
        kind="trial_ended",
        organisation_id=org["organisation_id"],
        subject="Your trial has ended",
        body=f"The trial of {org['name']} ({org['plan_code']} plan) ended on {outbox.when(ended)}. {outcome}",
        payload={
            "trial_ended_at": outbox.utc_iso(ended),
            "status": org["status"],
            "plan_code": org["plan_code"],
        },
    )
