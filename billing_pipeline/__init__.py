"""Usage-based billing data platform on Dagster: events to paid, reconciled invoices."""
