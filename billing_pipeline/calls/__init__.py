"""Voice calls (Vapi): end-of-call webhooks, the daily provider sync and call reconciliation.

A call is billed to the organisation named in its `metadata.organisation_id`, at its USD cost (Vapi's
float converted exactly with `Decimal(str(x))`, rounded once, half-up, to cents), charged once to that
organisation's wallet. Wallets are in their organisation's currency, so only USD wallets can take call
charges; a call of another organisation is refused (currency_mismatch) and shows in
billing.wallet_refusals.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from billing_pipeline import sql_files


def sql_text(name: str) -> sa.TextClause:
    """The statement in calls/sql/<name>.sql."""
    return sql_files.statement(__name__, name)


def arrays(names: Sequence[str], rows: Sequence[Sequence]) -> dict[str, list]:
    """Rows as one list per column: the parameters of `unnest(CAST(:name AS type[]), ...)`."""
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}
