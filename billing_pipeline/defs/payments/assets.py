"""Payments assets: the webhook inbox applied, the daily provider syncs, settlement, reconciliation."""

import dagster as dg

from billing_pipeline.audit import run_actor
from billing_pipeline.defs.findings import findings_metadata
from billing_pipeline.defs.partitions import daily
from billing_pipeline.defs.resources import AlertResource, WarehouseResource
from billing_pipeline.payments import handlers, inbox, reconciliation, settlement, sync

GROUP = "payments"


@dg.asset(group_name=GROUP, deps=["payment_collection"], kinds={"postgres"})
def payments(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, alerts: AlertResource
) -> dg.MaterializeResult:
    """billing.payments from the webhook inbox: Stripe charges, payment intents and refunds, Razorpay
    payments, orders and refunds, each event applied at most once and states only moving forward.

    A failing event is retried with exponential backoff (1 s to 1 h, 5 attempts), then moved to
    billing.webhook_dead_letters with its last error (`billing-pipeline webhooks replay` puts it back).
    """
    result = inbox.process_inbox(warehouse.engine, handlers.PROVIDERS, actor=run_actor(context.run_id))
    if result.dead_lettered:
        alerts.send(
            "Payment webhook events dead-lettered",
            {
                "events": len(result.dead_lettered),
                "first": f"{result.dead_lettered[0]['provider']} {result.dead_lettered[0]['event_id']}: "
                f"{result.dead_lettered[0]['last_error'][:200]}",
                "replay": "billing-pipeline webhooks replay",
            },
        )
    return dg.MaterializeResult(
        metadata={
            "events_applied": result.processed_total,
            "events_by_type": dg.MetadataValue.json(
                {f"{p} {t}": n for (p, t), n in sorted(result.processed.items())}
            ),
            "events_to_retry": result.retried,
            "events_dead_lettered": len(result.dead_lettered),
        }
    )


@dg.asset_check(asset=payments, description="No dead-lettered payment webhook is waiting for a replay.")
def no_dead_letters_waiting(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.engine.connect() as conn:
        waiting = [d for p in handlers.PROVIDERS for d in inbox.waiting_dead_letters(conn, p)]
    return dg.AssetCheckResult(
        passed=not waiting,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "waiting": len(waiting),
            "oldest": dg.MetadataValue.json(
                [
                    {
                        k: str(d[k])
                        for k in ("dead_letter_id", "provider", "event_id", "event_type", "last_error")
                    }
                    for d in waiting[:10]
                ]
            ),
        },
    )


def _sync_metadata(result: sync.SyncResult) -> dict:
    return {
        "window_start": result.window_start.isoformat(),
        "window_end": result.window_end.isoformat(),
        "listed": dg.MetadataValue.json(result.counts),
        "payments_recorded": result.applied.recorded,
        "payments_updated": result.applied.updated,
        "rejected": dg.MetadataValue.json(
            [{k: r[k] for k in ("object_type", "object_id", "reason")} for r in result.rejected[:20]]
        ),
    }


def _synced(context: dg.AssetExecutionContext, warehouse: WarehouseResource, run_sync, make_client):
    start, end = context.partition_time_window
    try:
        client = make_client(warehouse.settings())
    except sync.SyncNotConfigured as exc:
        raise dg.Failure(description=str(exc)) from exc
    try:
        result = run_sync(warehouse.engine, client, start, end, actor=run_actor(context.run_id))
    except sync.SyncFailed as exc:
        raise dg.Failure(description=str(exc)) from exc
    return dg.MaterializeResult(metadata=_sync_metadata(result))


@dg.asset(
    group_name=GROUP,
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"stripe", "postgres"},
)
def stripe_sync(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Stripe charges, refunds and balance transactions of the day, listed through the Stripe SDK
    (re-reading the 3 days before, Stripe's webhook retry horizon), upserted by id into
    billing.provider_records / billing.stripe_balance_transactions and applied to billing.payments."""
    return _synced(context, warehouse, sync.sync_stripe, sync.stripe_client)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"razorpay", "postgres"},
)
def razorpay_sync(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Razorpay orders, payments, refunds and settlements of the day, listed through the Razorpay SDK
    with offset paging over a closed window (re-reading the 3 days before), upserted by id into
    billing.provider_records / billing.razorpay_settlements and applied to billing.payments."""
    return _synced(context, warehouse, sync.sync_razorpay, sync.razorpay_client)


@dg.asset(
    group_name=GROUP, deps=[payments, stripe_sync, razorpay_sync, "finalized_invoices"], kinds={"postgres"}
)
def invoice_settlement(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """billing.invoice_payments: captured money allocated to finalized invoices (by the invoice named in the
    payment's metadata or notes, else by customer, amount and window), audited per invoice. Paid, partially
    paid and overpaid are derived per invoice in the view billing.invoice_balances."""
    with warehouse.engine.begin() as conn:
        result = settlement.settle_invoices(conn, actor=run_actor(context.run_id))
        states = settlement.settlement_states(conn)
    return dg.MaterializeResult(
        metadata={
            "allocations": result.allocations,
            "by_reference": result.by_reference,
            "by_rule": result.by_rule,
            "invoices_changed": result.invoices_changed,
            "invoices_by_state": dg.MetadataValue.json(states),
        }
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[stripe_sync, razorpay_sync, invoice_settlement],
    kinds={"postgres"},
)
def payment_reconciliation(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """recon.discrepancies (source payment_reconciliation) and recon.payment_reconciliation_totals for the
    day: provider records against billing.payments against invoices, as missing_internal,
    missing_at_provider, amount_mismatch, status_mismatch and duplicate findings. Export a day with
    `billing-pipeline recon export --date YYYY-MM-DD`."""
    start, end = context.partition_time_window
    try:
        with warehouse.engine.begin() as conn:
            result = reconciliation.reconcile_payments(conn, start.date(), end.date())
    except reconciliation.ReconciliationError as exc:
        raise dg.Failure(description=str(exc)) from exc
    totals, largest = reconciliation.markdown(result)
    by_kind: dict[str, int] = {}
    for t in result.totals:
        by_kind[t["outcome"]] = by_kind.get(t["outcome"], 0) + t["records"]
    return dg.MaterializeResult(
        metadata={
            "findings": result.findings,
            "records_by_outcome": dg.MetadataValue.json(by_kind),
            "totals": dg.MetadataValue.md(totals),
            "largest_findings": dg.MetadataValue.md(largest),
            **findings_metadata(warehouse.engine, reconciliation.SOURCE, start.date(), end.date()),
        }
    )
