"""Monthly invoicing: drafts, the checks that gate them, finalization, numbering, preview.

Plain Python and SQL (no Dagster import): `billing_pipeline/defs/invoicing` is the thin wiring.

* `drafts.build_drafts` prices every organisation's month in one transaction: usage comes in with a
  few set-based queries, `billing_pipeline.pricing` prices it in memory, the drafts go out with COPY.
* `checks` (SQL) and `expectations` (Great Expectations) judge a draft build and record their verdict.
* `finalize.finalize_month` finalizes a checked build all at once and closes the month.
* `preview.preview_invoice` prices one organisation's month so far, writing nothing.
"""

from __future__ import annotations

from billing_pipeline import sql_files
from billing_pipeline.ingestion.mover import MOVER_LOCK

# Every invoicing write (drafting, finalizing) holds this transaction-level advisory lock: drafts of
# different months read each other (credits consumed, late usage billed), and two runs of one month
# must produce one invoice per organisation.
INVOICING_LOCK = "billing.invoicing"
# The mover's lock, which every batch of events holds shared: finalization takes it exclusively, so
# no event can be committed with an ingested_at before the finalization while the finalization looks.
WAREHOUSE_EVENTS_LOCK = MOVER_LOCK
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext(:key))"


def load_sql(name: str) -> str:
    return sql_files.read(__name__, name)
