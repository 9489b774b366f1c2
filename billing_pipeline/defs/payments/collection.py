"""The monthly payment_collection asset: thin wiring around billing_pipeline.payments.collection."""

import dagster as dg

from billing_pipeline import markdown
from billing_pipeline.accounts.clock import SystemClock
from billing_pipeline.audit import run_actor
from billing_pipeline.defs.partitions import monthly
from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.payments import collection, sync


@dg.asset(
    group_name="payments",
    partitions_def=monthly,
    deps=[dg.AssetKey("finalized_invoices")],
    kinds={"stripe", "razorpay", "postgres"},
)
def payment_collection(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """billing.collection_attempts: each finalized invoice of the month collected once at its provider.
    Stripe: a confirmed off-session PaymentIntent for the amount due (idempotency key
    `collect:<invoice id>`); a decline opens the grace period and dunning retries. Razorpay: a Payment Link
    (reference id = invoice number) whose URL is sent through the notification outbox; its
    `payment_link.paid` webhook settles the invoice. Nothing due: settled without a provider call."""
    settings = warehouse.settings()
    clients = {}
    for name, make in (("stripe", sync.stripe_client), ("razorpay", sync.razorpay_client)):
        try:
            clients[name] = make(settings)
        except sync.SyncNotConfigured as exc:
            context.log.warning(f"{exc}: its invoices are asked to pay instead")
            clients[name] = None
    result = collection.collect_month(
        warehouse.engine,
        context.partition_time_window.start.date(),
        stripe_client=clients["stripe"],
        razorpay_client=clients["razorpay"],
        clock=SystemClock(),
        actor=run_actor(context.run_id),
    )
    columns = ["number", "provider", "status", "amount_minor", "currency", "error_code"]
    return dg.MaterializeResult(
        metadata={
            "claimed": len(result.claimed),
            "invoices_by_outcome": dg.MetadataValue.json(result.counts()),
            "grace_periods_opened": result.grace_opened,
            "notifications_queued": result.notifications_queued,
            "results": dg.MetadataValue.md(
                markdown.table(columns, ([r.get(c) for c in columns] for r in result.results), limit=20)
            ),
        }
    )
