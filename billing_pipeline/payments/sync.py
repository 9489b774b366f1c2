"""Daily provider syncs: the provider's lists are the truth, webhooks only early hints.

Each sync lists the objects created in its window through the real SDK (billing_pipeline/providers),
upserts them by provider id into billing.provider_records (and the balance/settlement tables), applies
them to billing.payments through the same forward-only upsert as the webhooks (a lost webhook is
recovered here; the ledger row then says `first_seen_via = 'sync'`), and records the synced days in
billing.provider_syncs. Running a day again changes nothing that the provider did not change.

The window starts OVERLAP before the day, so an object that changed after its day (a late capture, a
refund, a webhook still being retried) is read again by the next days' syncs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.payments import sql_text
from billing_pipeline.payments.ledger import Applied, Seen, apply_observations
from billing_pipeline.payments.objects import Observation, razorpay_observation, stripe_observation
from billing_pipeline.providers import razorpay_api, stripe_api
from billing_pipeline.providers.retry import ProviderUnavailable
from billing_pipeline.settings import Settings

log = logging.getLogger(__name__)

# Stripe retries a webhook for up to 3 days (https://docs.stripe.com/webhooks#retries): what changed in
# that time is read again.
STRIPE_OVERLAP = timedelta(days=3)
# Razorpay retries webhooks for 24 h, but refunds an uncaptured authorization after 3 days
# (https://razorpay.com/docs/payments/payments/capture-settings/): a change 3 days after creation.
RAZORPAY_OVERLAP = timedelta(days=3)


class SyncNotConfigured(RuntimeError):
    pass


class SyncFailed(RuntimeError):
    """The provider stayed unavailable through the retries: nothing of the window was written."""

    def __init__(self, provider: str, start: datetime, end: datetime, cause: Exception) -> None:
        super().__init__(
            f"{provider} sync of the window {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC failed, nothing"
            f" of it was written (the next run reads the whole window again): {cause}"
        )
        self.provider, self.start, self.end = provider, start, end


@dataclass
class SyncResult:
    provider: str
    window_start: datetime
    window_end: datetime
    counts: dict[str, int] = field(default_factory=dict)  # listed objects per type
    rejected: list[dict] = field(default_factory=list)  # object_type, object_id, reason
    applied: Applied = Applied(0, 0)


def stripe_client(settings: Settings):
    if not settings.stripe_api_key:
        raise SyncNotConfigured("STRIPE_API_KEY is not set: the Stripe sync cannot list anything")
    return stripe_api.make_client(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)


def razorpay_client(settings: Settings):
    if not (settings.razorpay_key_id and settings.razorpay_key_secret):
        raise SyncNotConfigured("RAZORPAY_KEY_ID and RAZORPAY_KEY_SECRET must be set for the Razorpay sync")
    return razorpay_api.make_client(
        settings.razorpay_key_id, settings.razorpay_key_secret.get_secret_value(), settings.razorpay_api_base
    )


def _parse(
    result: SyncResult,
    object_type: str,
    rows: Iterable[Mapping],
    parse: Callable[[Mapping, str], Observation],
) -> list[Observation]:
    parsed: dict[str, Observation] = {}
    count = 0
    for row in rows:
        count += 1
        try:
            obs = parse(row, object_type)
        except (ValueError, KeyError, TypeError) as exc:
            result.rejected.append(
                {
                    "object_type": object_type,
                    "object_id": str(row.get("id")),
                    "reason": f"{type(exc).__name__}: {exc}",
                    "raw": dict(row),
                }
            )
            continue
        parsed[obs.object_id] = obs
    result.counts[object_type] = count
    return list(parsed.values())


_REJECTS = sa.text("""
    INSERT INTO billing.provider_record_rejects (provider, object_type, object_id, reason, raw)
    SELECT CAST(:provider AS text), object_type, object_id, reason, raw
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
        AS r(object_type text, object_id text, reason text, raw jsonb)
    ON CONFLICT (provider, object_id) DO UPDATE
        SET reason = EXCLUDED.reason, raw = EXCLUDED.raw, seen_at = now()
""")
_SYNCED = sa.text("""
    INSERT INTO billing.provider_syncs (provider, sync_date, window_start, window_end, counts, synced_by)
    SELECT :provider, d, :start, :end, CAST(:counts AS jsonb), :actor FROM unnest(CAST(:days AS date[])) AS d
    ON CONFLICT (provider, sync_date) DO UPDATE SET window_start = EXCLUDED.window_start,
        window_end = EXCLUDED.window_end, counts = EXCLUDED.counts, synced_by = EXCLUDED.synced_by,
        synced_at = now()
""")


def _write(
    conn: sa.Connection, result: SyncResult, observations: list[Observation], days: list[date], actor: str
) -> None:
    rows = [o.row() for o in observations]
    if rows:
        conn.execute(sql_text("upsert_provider_records"), {"rows": json.dumps(rows, default=str)})
    if result.rejected:
        conn.execute(
            _REJECTS, {"provider": result.provider, "rows": json.dumps(result.rejected, default=str)}
        )
        log.warning(
            "%s sync: %d objects could not be read (billing.provider_record_rejects)",
            result.provider,
            len(result.rejected),
        )
    result.applied = apply_observations(conn, (Seen(o) for o in observations), via="sync", actor=actor)
    conn.execute(
        _SYNCED,
        {
            "provider": result.provider,
            "days": days,
            "start": result.window_start,
            "end": result.window_end,
            "counts": json.dumps(result.counts),
            "actor": actor,
        },
    )


def _days(start: datetime, end: datetime) -> list[date]:
    return [start.date() + timedelta(days=i) for i in range((end.date() - start.date()).days or 1)]


_STRIPE_TXNS = sa.text("""
    INSERT INTO billing.stripe_balance_transactions (balance_transaction_id, amount_minor, fee_minor,
        net_minor, currency, type, reporting_category, source, status, available_on, created_at, raw)
    SELECT id, amount, fee, net, upper(currency), type, reporting_category, source, status,
           to_timestamp(available_on), to_timestamp(created), raw
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS t(id text, amount bigint, fee bigint, net bigint,
        currency text, type text, reporting_category text, source text, status text, available_on bigint,
        created bigint, raw jsonb)
    ON CONFLICT (balance_transaction_id) DO UPDATE
        SET status = EXCLUDED.status, raw = EXCLUDED.raw, synced_at = now()
""")
_RAZORPAY_SETTLEMENTS = sa.text("""
    INSERT INTO billing.razorpay_settlements (settlement_id, amount_minor, fees_minor, tax_minor, utr,
        status, created_at, raw)
    SELECT id, amount, fees, tax, utr, status, to_timestamp(created_at), raw
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS s(id text, amount bigint, fees bigint, tax bigint,
        utr text, status text, created_at bigint, raw jsonb)
    ON CONFLICT (settlement_id) DO UPDATE
        SET status = EXCLUDED.status, utr = EXCLUDED.utr, raw = EXCLUDED.raw, synced_at = now()
""")


def _raw_rows(rows: Iterable[Mapping]) -> str:
    unique = {r["id"]: {**r, "raw": dict(r)} for r in rows}  # offset paging can list an object twice
    return json.dumps(list(unique.values()), default=str)


def sync_stripe(engine: Engine, client, start: datetime, end: datetime, *, actor: str) -> SyncResult:
    """Charges, refunds and balance transactions created in [start - overlap, end); days [start, end).

    Everything is listed first and written in one transaction: a provider that stays down (SyncFailed)
    or a warehouse that goes away leaves nothing of the window half-applied."""
    result = SyncResult("stripe", start - STRIPE_OVERLAP, end)
    lo, hi = int(result.window_start.timestamp()), int(end.timestamp())
    try:
        observations = _parse(
            result, "charge", stripe_api.list_charges(client, lo, hi), stripe_observation
        ) + _parse(result, "refund", stripe_api.list_refunds(client, lo, hi), stripe_observation)
        txns = list(stripe_api.list_balance_transactions(client, lo, hi))
    except ProviderUnavailable as exc:
        raise SyncFailed("stripe", result.window_start, end, exc) from exc
    result.counts["balance_transaction"] = len(txns)
    with engine.begin() as conn:
        if txns:
            conn.execute(_STRIPE_TXNS, {"rows": _raw_rows(txns)})
        _write(conn, result, observations, _days(start, end), actor)
    return result


def sync_razorpay(engine: Engine, client, start: datetime, end: datetime, *, actor: str) -> SyncResult:
    """Orders, payments, refunds and settlements created in [start - overlap, end); days [start, end).

    Listed first, written in one transaction, as `sync_stripe`."""
    result = SyncResult("razorpay", start - RAZORPAY_OVERLAP, end)
    lo, hi = int(result.window_start.timestamp()), int(end.timestamp())
    try:
        observations = (
            _parse(result, "order", razorpay_api.list_orders(client, lo, hi), razorpay_observation)
            + _parse(result, "payment", razorpay_api.list_payments(client, lo, hi), razorpay_observation)
            + _parse(result, "refund", razorpay_api.list_refunds(client, lo, hi), razorpay_observation)
        )
        settlements = list(razorpay_api.list_settlements(client, lo, hi))
    except ProviderUnavailable as exc:
        raise SyncFailed("razorpay", result.window_start, end, exc) from exc
    result.counts["settlement"] = len(settlements)
    with engine.begin() as conn:
        if settlements:
            conn.execute(_RAZORPAY_SETTLEMENTS, {"rows": _raw_rows(settlements)})
        _write(conn, result, observations, _days(start, end), actor)
    return result
