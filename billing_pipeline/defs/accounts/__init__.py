"""Accounts: trials, dunning retries, grace periods and notifications, one daily partitioned asset each
(the daily_accounts_job and its schedule are in defs/operations, with every other schedule)."""

import dagster as dg

from billing_pipeline.defs.accounts.assets import (
    AccountsClockResource,
    dunning_attempts,
    grace_periods,
    notification_outbox,
    trial_transitions,
)

defs = dg.Definitions(
    assets=[trial_transitions, dunning_attempts, grace_periods, notification_outbox],
    resources={"accounts_clock": AccountsClockResource()},
)
