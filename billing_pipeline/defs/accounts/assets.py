"""The daily accounts assets: thin wiring around billing_pipeline.accounts.

Each partition decides as of the end of its day (never later than now), so a range run is one pass as
of the range's end. Within a run: trials; dunning retries before grace periods, so that a retry that
succeeds on the last day of grace ends the period instead of restricting the organisation; then the
notifications queued by all of them are sent.
"""

from datetime import datetime

import dagster as dg

from billing_pipeline import markdown
from billing_pipeline.accounts import dunning, grace, outbox, trials
from billing_pipeline.accounts.clock import FixedClock, SystemClock, as_of
from billing_pipeline.accounts.senders import sender_from_settings
from billing_pipeline.accounts.settings import load_accounts_settings
from billing_pipeline.audit import run_actor
from billing_pipeline.defs.partitions import daily
from billing_pipeline.defs.resources import AlertResource, WarehouseResource
from billing_pipeline.providers import stripe_api

GROUP = "accounts"
INVOICE_SETTLEMENT = dg.AssetKey("invoice_settlement")  # payments: money allocated to finalized invoices


class AccountsClockResource(dg.ConfigurableResource):
    """The accounts' clock: the system clock, or a fixed instant (ISO 8601 with offset) for tests and
    for replaying a day exactly as it was decided."""

    fixed_at: str | None = None

    def clock(self):
        return FixedClock(datetime.fromisoformat(self.fixed_at)) if self.fixed_at else SystemClock()


def _as_of(context: dg.AssetExecutionContext, clock) -> datetime:
    return as_of(context.partition_time_window.end, clock)


def _table(rows: list[dict], columns: list[str], limit: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown.table(columns, ([r.get(c) for c in columns] for r in rows), limit=limit))


_DAILY = dict(group_name=GROUP, partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run())


@dg.asset(**_DAILY, kinds={"postgres"})
def trial_transitions(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, accounts_clock: AccountsClockResource
) -> dg.MaterializeResult:
    """Organisations whose trial ended by the end of the day leave it (billing.organisations.status):
    `active` on their plan when they can be charged (provider and customer id), `downgraded` otherwise;
    audited. A trial gets its reminder (billing.notification_outbox) on the day before it ends."""
    moment = _as_of(context, accounts_clock.clock())
    result = trials.run_trials(warehouse.engine, as_of=moment, actor=run_actor(context.run_id))
    return dg.MaterializeResult(
        metadata={
            "as_of": moment.isoformat(),
            "trials_ended": len(result.ended),
            "downgraded": result.downgraded,
            "continued_active": len(result.ended) - result.downgraded,
            "reminders": len(result.reminders),
            "notifications_queued": result.notifications_queued,
            "ended": _table(result.ended, ["organisation_id", "status", "trial_ended_at"]),
        }
    )


@dg.asset(**_DAILY, deps=[INVOICE_SETTLEMENT], kinds={"stripe", "postgres"})
def dunning_attempts(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, accounts_clock: AccountsClockResource
) -> dg.MaterializeResult:
    """billing.dunning_attempts: unpaid invoices in a grace period retried through Stripe on the retry
    schedule (BILLING_DUNNING_RETRY_DAYS, default days 1, 3, 5 and 7 after the failed payment), one
    PaymentIntent per attempt with the idempotency key `dunning:<invoice id>:<attempt>`; attempts left
    pending by a crash are repeated with their key. A successful retry is applied to billing.payments
    and settled against its invoice. Organisations that cannot be charged off-session are asked to pay."""
    clock = accounts_clock.clock()
    moment = _as_of(context, clock)
    settings = warehouse.settings()
    client = (
        stripe_api.make_client(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)
        if settings.stripe_api_key
        else None
    )
    if client is None:
        context.log.warning("STRIPE_API_KEY is not set: retries are recorded as skipped")
    result = dunning.run_dunning(
        warehouse.engine,
        client,
        as_of=moment,
        clock=clock,
        actor=run_actor(context.run_id),
        retry_days=load_accounts_settings().retry_days,
    )
    if result.unavailable:  # what was decided is recorded; the rest stays pending, same idempotency keys
        start, end = context.partition_time_window
        raise dg.Failure(
            description=f"stripe unavailable during dunning for {start:%Y-%m-%d} .. {end:%Y-%m-%d}:"
            f" {result.counts()['pending']} attempt(s) left pending for the next run ({result.unavailable[0]})",
            metadata={"attempts_by_outcome": dg.MetadataValue.json(result.counts())},
        )
    return dg.MaterializeResult(
        metadata={
            "as_of": moment.isoformat(),
            "claimed": len(result.claimed),
            "attempts_by_outcome": dg.MetadataValue.json(result.counts()),
            "notifications_queued": result.notifications_queued,
            "results": _table(
                result.results, ["invoice_id", "attempt", "status", "amount_minor", "currency", "error_code"]
            ),
        }
    )


@dg.asset(**_DAILY, deps=[dunning_attempts, INVOICE_SETTLEMENT], kinds={"postgres"})
def grace_periods(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, accounts_clock: AccountsClockResource
) -> dg.MaterializeResult:
    """billing.grace_periods: a finalized invoice whose payment failed opens a grace period (its plan's
    grace_period_days, default 7) during which the organisation keeps access (status `grace`); unpaid at
    its end, the organisation is `restricted`; a payment ends it (and lifts a restriction). Every
    transition is audited and announced in billing.notification_outbox."""
    moment = _as_of(context, accounts_clock.clock())
    result = grace.run_grace(warehouse.engine, as_of=moment, actor=run_actor(context.run_id))
    changes = {}
    for c in result.status_changes:
        changes[c["to_status"]] = changes.get(c["to_status"], 0) + 1
    return dg.MaterializeResult(
        metadata={
            "as_of": moment.isoformat(),
            "opened": len(result.opened),
            "paid": result.count("paid"),
            "expired": result.count("expired"),
            "organisations_now": dg.MetadataValue.json(changes),
            "notifications_queued": result.notifications_queued,
            "transitions": _table(
                result.closed, ["invoice_id", "number", "organisation_id", "from_status", "to_status"]
            ),
        }
    )


@dg.asset(**_DAILY, deps=[trial_transitions, dunning_attempts, grace_periods], kinds={"postgres"})
def notification_outbox(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    alerts: AlertResource,
    accounts_clock: AccountsClockResource,
) -> dg.MaterializeResult:
    """billing.notification_outbox delivered: every due notification sent once through the configured
    sender (BILLING_NOTIFY_WEBHOOK_URL as JSON, BILLING_NOTIFY_SMTP_URL by mail, else a log line);
    failures retried with backoff, dead after 5 attempts (alerted; `billing-pipeline accounts
    retry-notifications` requeues them)."""
    sender = sender_from_settings(load_accounts_settings())
    result = outbox.deliver_due(warehouse.engine, sender, accounts_clock.clock())
    if result.dead:
        first = result.dead[0]
        alerts.send(
            "Notifications could not be delivered",
            {
                "dead": len(result.dead),
                "via": result.via,
                "first": f"{first['kind']} to {first['organisation_id']}: {first['last_error']}",
                "requeue": "billing-pipeline accounts retry-notifications",
            },
        )
    return dg.MaterializeResult(
        metadata={"via": result.via, "sent": result.sent, "failed": result.failed, "dead": len(result.dead)}
    )
