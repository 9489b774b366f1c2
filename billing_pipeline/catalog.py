"""The catalog: billable metrics, versioned price plans with charges, organisations (a YAML file).

`load_catalog(path)` validates the whole file and raises CatalogError listing every problem with the
file, the path inside it and the reason. `apply_catalog(engine, catalog)` upserts it: applying the
same file twice changes nothing; a plan whose content changed becomes a new version and the old
version stays as it was (invoices name the version they used).

YAML numbers with a fraction are read as Decimal from their source text, so `0.002` is exactly
0.002: money never passes through a float.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import sqlalchemy as sa
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import Engine

from billing_pipeline import audit
from billing_pipeline.money import is_valid_currency
from billing_pipeline.pricing import validate_charge

Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
Amount = Annotated[Decimal, Field(ge=0, max_digits=30, decimal_places=12)]
Rate = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=12)]


class CatalogError(ValueError):
    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(
            f"{source}: {len(problems)} problem(s) in the catalog:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BillableMetric(_Strict):
    code: Code
    name: str = Field(min_length=1)
    aggregation: Literal["count", "sum", "max", "unique_count", "latest", "weighted_sum"]
    field: str | None = None  # the property that unique_count counts
    allow_negative: bool = False

    @model_validator(mode="after")
    def _field_only_for_unique_count(self):
        if self.aggregation == "unique_count" and not self.field:
            raise ValueError("unique_count needs `field`: the event property whose distinct values count")
        if self.aggregation != "unique_count" and self.field:
            raise ValueError("`field` is only meaningful for unique_count")
        return self


class Tier(_Strict):
    from_value: Annotated[Decimal, Field(ge=0)]
    to_value: Annotated[Decimal, Field(gt=0)] | None
    per_unit_amount: Amount = Decimal(0)
    flat_amount: Amount = Decimal(0)


class PercentageTier(_Strict):
    from_value: Annotated[Decimal, Field(ge=0)]
    to_value: Annotated[Decimal, Field(gt=0)] | None
    rate: Rate
    flat_amount: Amount = Decimal(0)


class _Charge(_Strict):
    """A charge: the pricing contract's dict plus the metric it prices. Its model-specific rules
    (tier bounds, whole packages, ...) are pricing's own, so pricing.validate_charge checks them."""

    metric: Code

    def pricing_dict(self) -> dict:
        """{"model": ..., **parameters}: what pricing.charge_amount takes."""
        return _jsonable(self.model_dump(exclude={"metric"}))

    @model_validator(mode="after")
    def _priceable(self):
        validate_charge(self.pricing_dict())
        return self


class StandardCharge(_Charge):
    model: Literal["standard"]
    unit_amount: Amount


class GraduatedCharge(_Charge):
    model: Literal["graduated"]
    tiers: list[Tier] = Field(min_length=1)


class VolumeCharge(_Charge):
    model: Literal["volume"]
    tiers: list[Tier] = Field(min_length=1)


class PackageCharge(_Charge):
    model: Literal["package"]
    package_size: Annotated[Decimal, Field(gt=0)]
    amount: Amount
    free_units: Annotated[Decimal, Field(ge=0)] = Decimal(0)


class PercentageCharge(_Charge):
    model: Literal["percentage"]
    rate: Rate
    fixed_amount: Amount = Decimal(0)
    free_units_per_events: Annotated[int, Field(ge=0)] | None = None
    free_units_per_total_aggregation: Amount | None = None
    per_transaction_min_amount: Amount | None = None
    per_transaction_max_amount: Amount | None = None

    @model_validator(mode="after")
    def _min_below_max(self):
        lo, hi = self.per_transaction_min_amount, self.per_transaction_max_amount
        if lo is not None and hi is not None and lo > hi:
            raise ValueError("per_transaction_min_amount is above per_transaction_max_amount")
        return self


class GraduatedPercentageCharge(_Charge):
    model: Literal["graduated_percentage"]
    tiers: list[PercentageTier] = Field(min_length=1)


Charge = Annotated[
    StandardCharge | GraduatedCharge | VolumeCharge | PackageCharge | PercentageCharge | GraduatedPercentageCharge,
    Field(discriminator="model"),
]


class Plan(_Strict):
    code: Code
    name: str = Field(min_length=1)
    currency: str
    minimum_commitment: Amount | None = None
    grace_period_days: Annotated[int, Field(ge=0, le=365)] = 7
    trial_days: Annotated[int, Field(ge=0, le=365)] = 0
    charges: list[Charge] = Field(min_length=1)

    _currency = field_validator("currency")(lambda v: _currency_code(v))

    @model_validator(mode="after")
    def _one_charge_per_metric(self):
        seen = [c.metric for c in self.charges]
        dupes = sorted({m for m in seen if seen.count(m) > 1})
        if dupes:
            raise ValueError(f"more than one charge for metric(s) {', '.join(dupes)}")
        return self


    def definition(self) -> dict:
        return _jsonable(self.model_dump(exclude_none=True))


class Discount(_Strict):
    code: Code
    kind: Literal["fixed", "percentage"]
    value: Amount
    valid_from: date
    valid_to: date | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _window(self):
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        if self.kind == "percentage" and self.value > 100:
            raise ValueError("a percentage discount is at most 100")
        return self


class Wallet(_Strict):
    debt_limit_minor: Annotated[int, Field(ge=0)] = 500
    recharge_threshold_minor: int = 0
    pays_invoices: bool = False  # payment_collection takes what the wallet holds before the provider


class Project(_Strict):
    id: Code
    name: str = Field(min_length=1)


class BillingDetails(_Strict):
    """Printed on invoices and credit notes (billing_pipeline/documents)."""

    legal_name: str | None = Field(None, min_length=1)
    address: list[Annotated[str, Field(min_length=1)]] = []
    tax_id: str | None = Field(None, min_length=1)
    email: str | None = Field(None, min_length=3)

    def document_dict(self) -> dict:
        return self.model_dump(exclude_none=True, exclude_defaults=True)


class Seller(BillingDetails):
    """The issuing company: its name, and the details on every document."""

    name: str = Field(min_length=1)


class Organisation(_Strict):
    id: Code
    name: str = Field(min_length=1)
    plan: Code
    currency: str
    provider: Literal["stripe", "razorpay", "none"] = "none"
    provider_customer_id: str | None = None
    tax_rate: Annotated[Decimal, Field(ge=0, lt=1, decimal_places=6)] = Decimal(0)
    prepaid_credits_minor: Annotated[int, Field(ge=0)] = 0
    wallet: Wallet = Wallet()
    trial_ends_at: datetime | None = None
    discounts: list[Discount] = []
    projects: list[Project] = []
    billing_details: BillingDetails | None = None

    _currency = field_validator("currency")(lambda v: _currency_code(v))

    @field_validator("trial_ends_at")
    @classmethod
    def _aware(cls, v):
        if v is not None and v.tzinfo is None:
            raise ValueError("trial_ends_at needs a UTC offset (e.g. 2026-10-15T00:00:00Z)")
        return v


class Catalog(_Strict):
    seller: Seller | None = None  # absent: the seller stored by an earlier apply stays
    billable_metrics: list[BillableMetric] = Field(min_length=1)
    plans: list[Plan] = Field(min_length=1)
    organisations: list[Organisation] = []


def _currency_code(value: str) -> str:
    if not isinstance(value, str) or not is_valid_currency(value.upper()):
        raise ValueError(f"{value!r} is not a supported ISO 4217 currency code")
    return value.upper()


def _jsonable(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def content_hash(value) -> str:
    return hashlib.sha256(json.dumps(_jsonable(value), sort_keys=True).encode()).hexdigest()


class _DecimalLoader(yaml.SafeLoader):
    pass


_DecimalLoader.add_constructor(
    "tag:yaml.org,2002:float", lambda loader, node: Decimal(loader.construct_scalar(node).replace("_", ""))
)


def _path(loc: tuple, data) -> str:
    """'plans[1].charges[0].tiers' from a pydantic location, naming items by their code when known."""
    parts, node = [], data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                ident = node[item].get("code") or node[item].get("id") or node[item].get("metric")
                if ident:
                    label = f"[{item}]({ident})"
            parts.append(label)
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            if item in ("standard", "graduated", "volume", "package", "percentage", "graduated_percentage"):
                continue  # the discriminated union's branch name adds nothing for a reader
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _items(data: dict, key: str) -> list[dict]:
    value = data.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _cross_references(data: dict) -> list[str]:
    """Problems between entries (unknown references, duplicates), read off the raw data so that they
    are reported together with the per-field problems."""
    problems = []
    metrics = {m.get("code") for m in _items(data, "billable_metrics")}
    plans = {p.get("code"): p for p in _items(data, "plans")}
    orgs = _items(data, "organisations")
    for kind, codes in (
        ("billable_metrics", [m.get("code") for m in _items(data, "billable_metrics")]),
        ("plans", [p.get("code") for p in _items(data, "plans")]),
        ("organisations", [o.get("id") for o in orgs]),
        ("projects", [p.get("id") for o in orgs for p in _items(o, "projects")]),
    ):
        for dup in sorted({c for c in codes if c is not None and codes.count(c) > 1}, key=str):
            problems.append(f"{kind}: {dup!r} is defined more than once")
    for i, plan in enumerate(_items(data, "plans")):
        for j, charge in enumerate(_items(plan, "charges")):
            if charge.get("metric") not in metrics:
                problems.append(
                    f"plans[{i}]({plan.get('code')}).charges[{j}].metric: no billable metric {charge.get('metric')!r}"
                )
    for i, org in enumerate(orgs):
        where = f"organisations[{i}]({org.get('id')})"
        plan = plans.get(org.get("plan"))
        if plan is None:
            problems.append(f"{where}.plan: no plan {org.get('plan')!r}")
        elif str(plan.get("currency", "")).upper() != str(org.get("currency", "")).upper():
            problems.append(
                f"{where}.currency: {org.get('currency')} differs from plan {plan.get('code')}'s"
                f" currency {plan.get('currency')}"
            )
        if org.get("provider", "none") != "none" and not org.get("provider_customer_id"):
            problems.append(f"{where}.provider_customer_id: required when provider is {org.get('provider')}")
    return problems


def parse_catalog(text: str, source: str = "<catalog>") -> Catalog:
    try:
        data = yaml.load(text, Loader=_DecimalLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise CatalogError(source, [f"not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise CatalogError(source, ["(top level): expected a mapping with billable_metrics, plans, organisations"])
    problems: list[str] = []
    catalog = None
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_path(e['loc'], data)}: {e['msg']}" for e in exc.errors(include_url=False)]
    problems += _cross_references(data)
    if problems:
        raise CatalogError(source, problems)
    return catalog


def load_catalog(path: Path | str) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    return parse_catalog(text, str(path))


# What finance and support care about when an organisation's catalog entry changes (audited).
_AUDITED = """
SELECT o.organisation_id, jsonb_build_object('plan', p.code || ' v' || p.version, 'currency', o.currency,
    'provider', o.provider, 'tax_rate', o.tax_rate, 'discounts', o.discounts,
    'prepaid_credits_minor', o.prepaid_credits_minor, 'debt_limit_minor', o.debt_limit_minor,
    'recharge_threshold_minor', o.recharge_threshold_minor, 'trial_ends_at', o.trial_ends_at,
    'wallet_pays_invoices', o.wallet_pays_invoices, 'billing_details', o.billing_details) AS state
FROM billing.organisations o JOIN billing.plans p USING (plan_id)
WHERE o.organisation_id = ANY(CAST(:ids AS text[]))
"""


def _organisations_before(conn: sa.Connection, catalog: Catalog, source: str) -> dict[str, dict]:
    """The current state of the catalog's organisations; refuses a currency change once an
    organisation has invoices or a wallet (their amounts are in the old currency)."""
    ids = [o.id for o in catalog.organisations]
    before = {r.organisation_id: r.state for r in conn.execute(sa.text(_AUDITED), {"ids": ids})}
    moved = [o.id for o in catalog.organisations if o.id in before and before[o.id]["currency"] != o.currency]
    if moved:
        stuck = conn.execute(
            sa.text(
                "SELECT organisation_id FROM billing.invoices WHERE organisation_id = ANY(CAST(:ids AS text[]))"
                " UNION SELECT organisation_id FROM billing.wallets WHERE organisation_id = ANY(CAST(:ids AS text[]))"
                " ORDER BY 1"
            ),
            {"ids": moved},
        ).scalars().all()
        if stuck:
            raise CatalogError(source, [
                f"organisations: {org}: currency cannot change once it has invoices or a wallet" for org in stuck
            ])
    return before


def _organisation_audit(conn, ids: list[str], before: dict[str, dict], actor: str, source: str):
    after = {r.organisation_id: r.state for r in conn.execute(sa.text(_AUDITED), {"ids": ids})}
    return [
        audit.AuditEntry(
            "organisation", org, "catalog_created" if org not in before else "catalog_changed", actor,
            detail={"source": source, "before": before.get(org), "after": after[org]},
        )
        for org in ids
    ]


def _apply_seller(conn: sa.Connection, seller: Seller, actor: str, source: str) -> int:
    """Upsert the one seller row; audited when it changes. Returns 1 when it changed."""
    details = seller.document_dict()
    name = details.pop("name")
    before = conn.execute(sa.text("SELECT name, details FROM billing.seller")).mappings().one_or_none()
    changed = conn.execute(
        sa.text(
            """
            INSERT INTO billing.seller (name, details) VALUES (:name, CAST(:details AS jsonb))
            ON CONFLICT (seller_id) DO UPDATE SET name = excluded.name, details = excluded.details, updated_at = now()
            WHERE (seller.name, seller.details) IS DISTINCT FROM (excluded.name, excluded.details)
            """
        ),
        {"name": name, "details": json.dumps(details)},
    ).rowcount
    if changed:
        audit.record(conn, [audit.AuditEntry(
            "seller", "seller", "catalog_created" if before is None else "catalog_changed", actor,
            detail={"source": source, "before": dict(before) if before else None,
                    "after": {"name": name, "details": details}},
        )])  # fmt: skip
    return changed


def apply_catalog(engine: Engine, catalog: Catalog, *, source: str, applied_by: str) -> dict:
    """Upsert the catalog in one transaction; returns counts of what changed (all zero on a re-apply)."""
    summary = {"metrics_changed": 0, "plan_versions_created": 0, "organisations_changed": 0, "projects_changed": 0,
               "seller_changed": 0}
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('billing.catalog'))"))
        if catalog.seller is not None:
            summary["seller_changed"] = _apply_seller(conn, catalog.seller, applied_by, source)
        for m in catalog.billable_metrics:
            summary["metrics_changed"] += conn.execute(
                sa.text(
                    """
                    INSERT INTO billing.billable_metrics (code, name, aggregation, field_name, allow_negative)
                    VALUES (:code, :name, :aggregation, :field, :allow_negative)
                    ON CONFLICT (code) DO UPDATE SET name = excluded.name, aggregation = excluded.aggregation,
                        field_name = excluded.field_name, allow_negative = excluded.allow_negative,
                        updated_at = now()
                    WHERE (billable_metrics.name, billable_metrics.aggregation, billable_metrics.field_name,
                           billable_metrics.allow_negative)
                          IS DISTINCT FROM (excluded.name, excluded.aggregation, excluded.field_name,
                                            excluded.allow_negative)
                    """
                ),
                m.model_dump(),
            ).rowcount

        plan_ids: dict[str, int] = {}
        for plan in catalog.plans:
            definition = plan.definition()
            digest = content_hash(definition)
            latest = conn.execute(
                sa.text(
                    "SELECT plan_id, version, content_hash FROM billing.plans WHERE code = :code"
                    " ORDER BY version DESC LIMIT 1"
                ),
                {"code": plan.code},
            ).first()
            if latest is not None and latest.content_hash == digest:
                plan_ids[plan.code] = latest.plan_id
                continue
            plan_id = conn.execute(
                sa.text(
                    """
                    INSERT INTO billing.plans (code, version, name, currency, minimum_commitment,
                        grace_period_days, trial_days, definition, content_hash)
                    VALUES (:code, :version, :name, :currency, :minimum_commitment, :grace, :trial,
                        CAST(:definition AS jsonb), :hash)
                    RETURNING plan_id
                    """
                ),
                {
                    "code": plan.code,
                    "version": 1 if latest is None else latest.version + 1,
                    "name": plan.name,
                    "currency": plan.currency,
                    "minimum_commitment": plan.minimum_commitment,
                    "grace": plan.grace_period_days,
                    "trial": plan.trial_days,
                    "definition": json.dumps(definition),
                    "hash": digest,
                },
            ).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT INTO billing.plan_charges (plan_id, metric_code, model, properties)"
                    " VALUES (:plan_id, :metric, :model, CAST(:properties AS jsonb))"
                ),
                [
                    {
                        "plan_id": plan_id,
                        "metric": charge.metric,
                        "model": charge.model,
                        "properties": json.dumps(charge.pricing_dict()),
                    }
                    for charge in plan.charges
                ],
            )
            plan_ids[plan.code] = plan_id
            summary["plan_versions_created"] += 1

        before = _organisations_before(conn, catalog, source)
        changed_orgs = []
        for org in catalog.organisations:
            entry = org.model_dump(exclude={"projects"})
            if not org.wallet.pays_invoices:  # the default: entries written before the option hash the same
                entry["wallet"].pop("pays_invoices")
            if org.billing_details is None:  # likewise
                entry.pop("billing_details")
            changed = conn.execute(
                sa.text(
                    """
                    INSERT INTO billing.organisations (organisation_id, name, plan_code, plan_id, currency,
                        provider, provider_customer_id, tax_rate, discounts, prepaid_credits_minor,
                        debt_limit_minor, recharge_threshold_minor, trial_ends_at, status, catalog_hash,
                        wallet_pays_invoices, billing_details)
                    VALUES (:id, :name, :plan, :plan_id, :currency, :provider, :customer, :tax_rate,
                        CAST(:discounts AS jsonb), :credits, :debt_limit, :recharge, :trial_ends_at,
                        CASE WHEN CAST(:trial_ends_at AS timestamptz) > now() THEN 'trialing' ELSE 'active' END,
                        :hash, :wallet_pays, CAST(:billing_details AS jsonb))
                    ON CONFLICT (organisation_id) DO UPDATE SET name = excluded.name,
                        plan_code = excluded.plan_code, plan_id = excluded.plan_id, currency = excluded.currency,
                        provider = excluded.provider, provider_customer_id = excluded.provider_customer_id,
                        tax_rate = excluded.tax_rate, discounts = excluded.discounts,
                        prepaid_credits_minor = excluded.prepaid_credits_minor,
                        debt_limit_minor = excluded.debt_limit_minor,
                        recharge_threshold_minor = excluded.recharge_threshold_minor,
                        wallet_pays_invoices = excluded.wallet_pays_invoices,
                        billing_details = excluded.billing_details,
                        trial_ends_at = excluded.trial_ends_at, catalog_hash = excluded.catalog_hash,
                        updated_at = now()
                    WHERE organisations.catalog_hash <> excluded.catalog_hash
                       OR organisations.plan_id <> excluded.plan_id
                    """
                ),
                {
                    "id": org.id,
                    "name": org.name,
                    "plan": org.plan,
                    "plan_id": plan_ids[org.plan],
                    "currency": org.currency,
                    "provider": org.provider,
                    "customer": org.provider_customer_id,
                    "tax_rate": org.tax_rate,
                    "discounts": json.dumps(_jsonable([d.model_dump() for d in org.discounts])),
                    "credits": org.prepaid_credits_minor,
                    "debt_limit": org.wallet.debt_limit_minor,
                    "recharge": org.wallet.recharge_threshold_minor,
                    "wallet_pays": org.wallet.pays_invoices,
                    "billing_details": json.dumps(org.billing_details.document_dict() if org.billing_details else {}),
                    "trial_ends_at": org.trial_ends_at,
                    "hash": content_hash(entry),
                },
            ).rowcount
            summary["organisations_changed"] += changed
            if changed:
                changed_orgs.append(org.id)
            for project in org.projects:
                summary["projects_changed"] += conn.execute(
                    sa.text(
                        """
                        INSERT INTO billing.projects (project_id, organisation_id, name) VALUES (:id, :org, :name)
                        ON CONFLICT (project_id) DO UPDATE SET organisation_id = excluded.organisation_id,
                            name = excluded.name
                        WHERE (projects.organisation_id, projects.name)
                              IS DISTINCT FROM (excluded.organisation_id, excluded.name)
                        """
                    ),
                    {"id": project.id, "org": org.id, "name": project.name},
                ).rowcount

        audit.record(conn, _organisation_audit(conn, changed_orgs, before, applied_by, source))
        if any(summary.values()):
            application_id = conn.execute(
                sa.text(
                    "INSERT INTO billing.catalog_applications (source_file, content_hash, applied_by, summary)"
                    " VALUES (:source, :hash, :by, CAST(:summary AS jsonb)) RETURNING application_id"
                ),
                {
                    "source": source,
                    "hash": content_hash(catalog.model_dump()),
                    "by": applied_by,
                    "summary": json.dumps(summary),
                },
            ).scalar_one()
            audit.record(conn, [audit.AuditEntry(
                "catalog_application", str(application_id), "applied", actor=applied_by,
                detail={"source": source, **summary},
            )])
    return summary
