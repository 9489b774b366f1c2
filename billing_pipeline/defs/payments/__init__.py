"""Payments: the webhook inbox applied to billing.payments, daily syncs, settlement and reconciliation.

The daily assets are scheduled by operations' daily_reconciliation_job (group `payments`); the inbox
by operations' webhook_inbox_sensor.
"""

import dagster as dg

from billing_pipeline.defs.partitions import daily
from billing_pipeline.defs.payments.assets import (
    invoice_settlement,
    no_dead_letters_waiting,
    payment_reconciliation,
    payments,
    razorpay_sync,
    stripe_sync,
)
from billing_pipeline.defs.payments.collection import payment_collection

payments_daily_job = dg.define_asset_job(
    "payments_daily_job",
    selection=dg.AssetSelection.assets(
        stripe_sync, razorpay_sync, invoice_settlement, payment_reconciliation
    ),
    partitions_def=daily,
    description="Sync the day from Stripe and Razorpay, settle invoices, reconcile the day (the schedule is "
    "operations' daily_reconciliation_job; this job runs or backfills payments alone).",
)

defs = dg.Definitions(
    assets=[
        payment_collection, payments, stripe_sync, razorpay_sync, invoice_settlement, payment_reconciliation
    ],
    asset_checks=[no_dead_letters_waiting],
    jobs=[payments_daily_job],
)
