"""Pricing: Lago's charge models, and the invoice arithmetic (commitment, discounts, tax, credits).

Pure Python over `Decimal`; no float, no database, no Dagster. Two layers:

* `charge_amount(charge, units, event_amounts=())` prices one charge for one period and returns an
  unrounded Decimal. The models and their parameter names are those of DESIGN.md ("Billable metrics
  and charge models"); the semantics are Lago's (getlago.com docs "Charge models", and the lago-api
  services under app/services/charge_models/), cited per model below.
* `price_invoice(...)` turns the charge amounts of one organisation and period into invoice totals
  in integer minor units: one half-up rounding per line, then commitment, discounts, tax, credits.

Conventions shared by every model:
* Parameter values may be str, int or Decimal (the catalog YAML gives strings); a float is refused
  with ValueError. A parameter given as None is treated as absent.
* Prices, rates and free allowances are non-negative. A percentage `rate` is in percent, as in Lago
  ("1.2" means 1.2 %).
* Tier lists follow Lago's bounds (app/services/validators/range_bounds_validator.rb, used by its
  graduated, volume and graduated_percentage validators): the first `from_value` is 0 (or 1), each
  next `from_value` is the previous `to_value` + 1 (integer ranges: 0-100, 101-200) or equal to it
  (adjacent ranges, for fractional metrics: 0-0.1, 0.1-1, 1-), every `to_value` but the last is
  greater than its `from_value`, the last is None. Graduated tiers count units as Lago's
  ChargeModels::AmountDetails::RangeGraduatedService does: a tier starting above 0 holds
  `effective - from_value + 1` units for integer ranges and `effective - from_value` when every tier
  is adjacent to the one before (Lago's `adjacent_ranges?`).
* `units` (the period's aggregated value) must be >= 0: a negative period total is refused with
  ValueError rather than priced (tiers, packages and percentages have no meaning below zero).
* Arithmetic runs in a 60-digit context that traps inexact results: a charge is either exact or an
  error, never silently rounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Any

from billing_pipeline.money import from_minor, minor_unit_exponent, parse_decimal, to_minor

__all__ = [
    "CHARGE_MODELS",
    "charge_amount",
    "validate_charge",
    "LineInput",
    "Discount",
    "PricedLine",
    "AppliedDiscount",
    "InvoiceTotals",
    "price_invoice",
    "discount_applies",
]

_EXACT = Context(prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


# --------------------------------------------------------------------------------------------------
# Parameter parsing
# --------------------------------------------------------------------------------------------------


def _num(value: Any, what: str) -> Decimal:
    try:
        return parse_decimal(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _param(
    charge: Mapping, key: str, *, default: Decimal | None = None, required: bool = True
) -> Decimal | None:
    value = charge.get(key)
    if value is None:
        if required:
            raise ValueError(f"{charge.get('model')} charge: missing parameter {key!r}")
        return default
    number = _num(value, f"{charge.get('model')} charge, {key}")
    if number < 0:
        raise ValueError(f"{charge.get('model')} charge: {key} must be >= 0, got {number}")
    return number


def _whole(charge: Mapping, key: str, number: Decimal) -> Decimal:
    if number != number.to_integral_value():
        raise ValueError(f"{charge.get('model')} charge: {key} must be a whole number, got {number}")
    return number


def _check_keys(charge: Mapping, allowed: set[str]) -> None:
    unknown = set(charge) - allowed - {"model"}
    if unknown:
        raise ValueError(
            f"{charge.get('model')} charge: unknown parameter(s) {sorted(unknown)}; "
            f"expected {sorted(allowed)}"
        )


@dataclass(frozen=True)
class _Tier:
    from_value: Decimal
    to_value: Decimal | None
    price: Decimal  # per_unit_amount, or rate in percent for graduated_percentage
    flat_amount: Decimal


def _tiers(charge: Mapping, price_key: str) -> list[_Tier]:
    """Parse and validate `tiers` with Lago's bound rules (see the module docstring)."""
    model = charge.get("model")
    _check_keys(charge, {"tiers"})
    raw = charge.get("tiers")
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not raw:
        raise ValueError(f"{model} charge: 'tiers' must be a non-empty list")
    tiers: list[_Tier] = []
    previous_to = _ZERO
    for index, item in enumerate(raw):
        where = f"{model} charge, tier {index + 1}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: a tier must be a mapping")
        unknown = set(item) - {"from_value", "to_value", price_key, "flat_amount"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
        if item.get("from_value") is None or item.get(price_key) is None:
            raise ValueError(f"{where}: from_value and {price_key} are required")
        from_value = _num(item["from_value"], f"{where}, from_value")
        to_value = None if item.get("to_value") is None else _num(item["to_value"], f"{where}, to_value")
        price = _num(item[price_key], f"{where}, {price_key}")
        flat = _num(
            item.get("flat_amount") if item.get("flat_amount") is not None else 0, f"{where}, flat_amount"
        )
        if price < 0 or flat < 0:
            raise ValueError(f"{where}: {price_key} and flat_amount must be >= 0")
        if from_value not in (previous_to, previous_to + 1):
            raise ValueError(
                f"{where}: from_value must be {previous_to} (adjacent ranges) or {previous_to + 1}"
                f" (integer ranges, the previous to_value + 1), got {from_value}"
            )
        last = index == len(raw) - 1
        if last and to_value is not None:
            raise ValueError(f"{where}: the last tier's to_value must be null (open-ended)")
        if not last and (to_value is None or to_value <= from_value):
            raise ValueError(
                f"{where}: to_value must be greater than from_value (only the last tier is open)"
            )
        tiers.append(_Tier(from_value, to_value, price, flat))
        if to_value is not None:
            previous_to = to_value
    return tiers


def _adjacent(tiers: list[_Tier]) -> bool:
    """Lago's `adjacent_ranges?`: two tiers or more, each starting where the one before ended."""
    return len(tiers) >= 2 and all(cur.from_value == prev.to_value for prev, cur in zip(tiers, tiers[1:]))


def _tier_units(tier: _Tier, total: Decimal, adjacent: bool = False) -> Decimal:
    """Units of `total` that fall in `tier`, exactly as Lago's RangeGraduatedService#units.

    The total is capped at the tier's to_value; a tier from 0 holds all of it; a later tier holds
    what is above its from_value, + 1 for integer ranges ([0, 100] and [101, 200] hold 100 each), + 0
    for adjacent ones ([0, 0.1] and [0.1, 1] hold 0.1 and 0.9).
    """
    effective = tier.to_value if tier.to_value is not None and total >= tier.to_value else total
    if tier.from_value == 0:
        return effective
    return effective - tier.from_value + (0 if adjacent else 1)


# --------------------------------------------------------------------------------------------------
# Charge models: one function each, (charge, units, event_amounts) -> unrounded Decimal.
# Each parses all its parameters before any early return, so `validate_charge` sees every error.
# --------------------------------------------------------------------------------------------------


def _standard(charge: Mapping, units: Decimal, event_amounts: Sequence[Decimal]) -> Decimal:
    """units x unit_amount.

    Lago: app/services/charge_models/standard_service.rb (`units * BigDecimal(properties
    ['amount'])`); the parameter is named `unit_amount` here. Zero units cost zero.
    """
    _check_keys(charge, {"unit_amount"})
    unit_amount = _param(charge, "unit_amount")
    return units * unit_amount


def _graduated(charge: Mapping, units: Decimal, event_amounts: Sequence[Decimal]) -> Decimal:
    """Each tier prices the units that fall in it; a tier's flat_amount is added once units enter it.

    Lago: app/services/charge_models/graduated_service.rb with
    app/services/charge_models/amount_details/range_graduated_service.rb: walk the tiers in order;
    units in a tier per `_tier_units` (adjacent or integer ranges); every tier walked adds units x
    per_unit_amount plus its flat_amount; stop at the tier whose to_value is null or >= units. So at
    exactly units == to_value the next tier is not entered (no flat fee), and more units enter it.
    Zero units walk the first tier only: they cost its flat_amount (Lago's spec "when aggregation is
    0 ... applies the flat amount from the first tier").
    Docs: getlago.com/docs/guide/plans/charges/charge-models/graduated
    """
    tiers = _tiers(charge, "per_unit_amount")
    adjacent = _adjacent(tiers)
    total = _ZERO
    for tier in tiers:
        total += _tier_units(tier, units, adjacent) * tier.price + tier.flat_amount
        if tier.to_value is None or tier.to_value >= units:
            break
    return total


def _volume(charge: Mapping, units: Decimal, event_amounts: Sequence[Decimal]) -> Decimal:
    """All units at the price of the one tier the total falls in, plus that tier's flat_amount.

    Lago: app/services/charge_models/volume_service.rb: the matching tier is the first with
    from_value <= ceil(units) and (to_value null or units <= to_value) (so 100.5 units with tiers
    [0, 100], [101, ...] fall in the second, and adjacent decimal tiers match by their upper bound),
    and the amount is units x per_unit_amount + flat_amount. Zero units match the first tier and
    cost its flat_amount (Lago's spec "when aggregation is 0": 10). Not monotonic in units: crossing
    into a cheaper tier can lower the total (Lago's and Stripe's docs say so). Where no tier matches
    (zero units below a first tier starting at 1), Lago fails; here nothing is charged.
    Docs: getlago.com/docs/guide/plans/charges/charge-models/volume
    """
    tiers = _tiers(charge, "per_unit_amount")
    ceiling = units.to_integral_value(rounding=ROUND_CEILING)
    for tier in tiers:
        if tier.from_value <= ceiling and (tier.to_value is None or units <= tier.to_value):
            return units * tier.price + tier.flat_amount
    return _ZERO


def _package(charge: Mapping, units: Decimal, event_amounts: Sequence[Decimal]) -> Decimal:
    """ceil((units - free_units) / package_size) packages at `amount` each; nothing within free units.

    Lago: app/services/charge_models/package_service.rb: paid_units = units - free_units;
    negative -> 0; package count rounded up "because a group counts from its first unit". package_size
    must be a positive whole number and free_units a whole number >= 0 (Lago's
    app/services/charges/validators/package_service.rb); free_units defaults to 0. Zero units cost
    zero. Docs example: $5 per 100 units, first 100 free, 201 units cost $10
    (getlago.com/docs/guide/plans/charges/charge-models/package).
    """
    _check_keys(charge, {"package_size", "amount", "free_units"})
    size = _whole(charge, "package_size", _param(charge, "package_size"))
    if size == 0:
        raise ValueError("package charge: package_size must be > 0")
    amount = _param(charge, "amount")
    free_units = _whole(charge, "free_units", _param(charge, "free_units", default=_ZERO, required=False))
    paid_units = units - free_units
    if paid_units <= 0:
        return _ZERO
    packages, remainder = divmod(paid_units, size)
    if remainder:
        packages += 1
    return packages * amount


def _percentage(charge: Mapping, units: Decimal, event_amounts: Sequence[Decimal]) -> Decimal:
    """rate % of the paid amount, plus fixed_amount per paid transaction, clamped per transaction.

    Lago: app/services/charge_models/percentage_service.rb and the docs page
    getlago.com/docs/guide/plans/charges/charge-models/percentage. `units` is the sum of the events'
    amounts (a `sum` metric) and `event_amounts` the transactions, in order.

    * free_units_per_events = N: the first N transactions are free (no rate, no fixed fee).
    * free_units_per_total_aggregation = A: the first A of amount is free of the rate.
    * Both: "the first 3 events or $500 are free", i.e. the free period ends at whichever limit is
      reached first. The transaction that reaches A pays the rate on its part above A and the fixed
      fee (Lago: running totals strictly below A are free of the fixed fee).
    * fixed_amount: per paid transaction. per_transaction_min_amount / per_transaction_max_amount:
      each paid transaction's (rate + fixed) amount is clamped to [min, max] (Lago's
      compute_amount_with_transaction_min_max; min <= max is required).
    * Zero: with no min/max, zero units cost zero (Lago: `return 0 if units.zero?` for the fixed fee).
      Lago says otherwise for min: with per_transaction_min_amount, every paid transaction costs at
      least the minimum, a zero-amount one included.

    Where Lago's code departs from its documented "whichever first" rule, this follows the docs:
    (a) with both N and A and N < number of events, Lago frees rt[N-1] of amount even when that is
    above A; here the free amount is min(rt[N-1], A); (b) when the first transaction alone reaches A,
    Lago's `excluding(0)` drops the A limit and frees N events of the fixed fee; here none are freed;
    (c) Lago's min/max loop keeps transactions free by amount after the N free events are used up;
    here the free period ends after N events. In every other case the result equals Lago's.

    event_amounts must sum to units. They may be omitted (with units >= 0) only when no per-event
    parameter is set (fixed_amount, free_units_per_events, min/max); then the amount is
    rate % x max(units - A, 0).
    """
    _check_keys(
        charge,
        {
            "rate",
            "fixed_amount",
            "free_units_per_events",
            "free_units_per_total_aggregation",
            "per_transaction_min_amount",
            "per_transaction_max_amount",
        },
    )
    rate = _param(charge, "rate")
    fixed = _param(charge, "fixed_amount", default=_ZERO, required=False)
    free_events = _whole(
        charge,
        "free_units_per_events",
        _param(charge, "free_units_per_events", default=_ZERO, required=False),
    )
    free_amount = _param(charge, "free_units_per_total_aggregation", default=_ZERO, required=False)
    minimum = _param(charge, "per_transaction_min_amount", required=False)
    maximum = _param(charge, "per_transaction_max_amount", required=False)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(
            "percentage charge: per_transaction_min_amount must be <= per_transaction_max_amount"
        )
    clamped = minimum is not None or maximum is not None

    if not event_amounts:
        if units != 0 and (fixed != 0 or free_events != 0 or clamped):
            raise ValueError(
                "percentage charge: event_amounts are required when fixed_amount, free_units_per_events "
                "or a per-transaction min/max is set"
            )
        return max(units - free_amount, _ZERO) * rate / _HUNDRED
    if sum(event_amounts, _ZERO) != units:
        raise ValueError(
            f"percentage charge: event_amounts sum to {sum(event_amounts, _ZERO)}, not to units {units}"
        )
    if not clamped and units == 0:
        return _ZERO

    total = _ZERO
    in_free_period = free_events > 0 or free_amount > 0
    remaining_free_amount = free_amount
    for index, value in enumerate(event_amounts):
        if in_free_period and free_events > 0 and index >= free_events:
            in_free_period = False
        if in_free_period:
            if free_amount == 0:
                continue  # free by count
            if remaining_free_amount > value:
                remaining_free_amount -= value
                continue  # free by amount
            value -= remaining_free_amount  # this transaction reaches A: pays above it, and the fixed fee
            remaining_free_amount = _ZERO
            in_free_period = False
        amount = value * rate / _HUNDRED + fixed
        if minimum is not None and amount < minimum:
            amount = minimum
        if maximum is not None and amount > maximum:
            amount = maximum
        total += amount
    return total


def _graduated_percentage(charge: Mapping, units: Decimal, event_amounts: Sequence[Decimal]) -> Decimal:
    """Graduated tiers of rates: each tier takes rate % of the units in it, plus its flat_amount once entered.

    Lago: app/services/charge_models/graduated_percentage_service.rb with
    app/services/charge_models/amount_details/range_graduated_percentage_service.rb: the same tier
    walk and bounds as graduated; per tier walked (units_in_tier x rate) / 100 plus its flat_amount,
    so zero units cost the first tier's flat_amount (Lago's spec: 200). Unlike graduated, Lago counts
    a later tier's units as `effective - from_value + 1` even for adjacent ranges, and so does this.
    flat_amount is optional here (docs: "the rate is the only mandatory value").
    Docs: getlago.com/docs/guide/plans/charges/charge-models/graduated-percentage
    """
    tiers = _tiers(charge, "rate")
    total = _ZERO
    for tier in tiers:
        total += _tier_units(tier, units) * tier.price / _HUNDRED + tier.flat_amount
        if tier.to_value is None or tier.to_value >= units:
            break
    return total


_MODELS: dict[str, Callable[[Mapping, Decimal, Sequence[Decimal]], Decimal]] = {
    "standard": _standard,
    "graduated": _graduated,
    "volume": _volume,
    "package": _package,
    "percentage": _percentage,
    "graduated_percentage": _graduated_percentage,
}
CHARGE_MODELS: tuple[str, ...] = tuple(_MODELS)


def charge_amount(charge: Mapping, units: Decimal, event_amounts: Sequence[Decimal] = ()) -> Decimal:
    """The amount of one charge for one period: exact, unrounded, in major units of the plan currency.

    `charge` is the catalog's dict for one charge, `{"model": ..., **parameters}` (DESIGN.md);
    `units` the period's aggregated value of the metric; `event_amounts` the per-event amounts, in
    order, used by the percentage model only. Raises ValueError for an unknown model, a missing,
    unknown, negative or float parameter, malformed tiers, or negative units.
    """
    if not isinstance(charge, Mapping):
        raise ValueError(f"a charge must be a mapping, got {type(charge).__name__}")
    model = charge.get("model")
    price = _MODELS.get(model) if isinstance(model, str) else None
    if price is None:
        raise ValueError(f"unknown charge model {model!r}; expected one of {list(CHARGE_MODELS)}")
    quantity = _num(units, "units")
    if quantity < 0:
        raise ValueError(f"units must be >= 0 for a period, got {quantity}")
    amounts = [_num(a, f"event_amounts[{i}]") for i, a in enumerate(event_amounts)]
    if any(a < 0 for a in amounts):
        raise ValueError("event_amounts must be >= 0")
    try:
        with localcontext(_EXACT):
            return price(charge, quantity, amounts)
    except DecimalException as exc:
        raise ValueError(f"{model} charge cannot be computed exactly within 60 digits: {exc!r}") from None


def validate_charge(charge: Mapping) -> None:
    """Raise ValueError if `charge` is not a valid charge (for the catalog to check before applying)."""
    charge_amount(charge, _ZERO)


# --------------------------------------------------------------------------------------------------
# Invoice level
# --------------------------------------------------------------------------------------------------

LINE_KINDS = ("usage", "late_usage")
TRUE_UP_KIND = "minimum_commitment"
DISCOUNT_KINDS = ("fixed", "percentage")


@dataclass(frozen=True)
class LineInput:
    """One charge line before rounding: `amount` is `charge_amount`'s unrounded result.

    kind "usage" is this period's usage (compared with the minimum commitment); "late_usage" is usage
    of an already finalized month billed on this invoice (billed in full, outside the commitment:
    that month's commitment was settled on its own invoice).
    """

    key: str
    amount: Decimal
    kind: str = "usage"


@dataclass(frozen=True)
class Discount:
    """A fixed-amount or percentage discount with an inclusive validity window.

    kind "fixed": `value` is an amount in major units of the invoice currency ("25.00").
    kind "percentage": `value` is in percent, 0..100 ("10" is 10 %).
    valid_to None means open-ended.
    """

    code: str
    kind: str
    value: Decimal
    valid_from: date
    valid_to: date | None = None

    @classmethod
    def from_mapping(cls, data: Mapping) -> Discount:
        """From a catalog/JSON dict {code, kind, value, valid_from, valid_to?}; dates ISO strings or dates."""

        def day(value: Any, name: str) -> date | None:
            if value is None:
                return None
            if isinstance(value, str):
                return date.fromisoformat(value)
            if isinstance(value, date) and not isinstance(value, datetime):
                return value
            raise ValueError(f"discount {data.get('code')!r}: {name} must be a date, got {value!r}")

        valid_from = day(data.get("valid_from"), "valid_from")
        if valid_from is None:
            raise ValueError(f"discount {data.get('code')!r}: valid_from is required")
        return cls(
            code=str(data.get("code")),
            kind=str(data.get("kind")),
            value=_num(data.get("value"), f"discount {data.get('code')!r}, value"),
            valid_from=valid_from,
            valid_to=day(data.get("valid_to"), "valid_to"),
        )


@dataclass(frozen=True)
class PricedLine:
    key: str
    kind: str
    amount: Decimal  # unrounded
    amount_minor: int  # rounded once, half-up, to the currency's minor unit


@dataclass(frozen=True)
class AppliedDiscount:
    code: str
    kind: str
    amount_minor: int


@dataclass(frozen=True)
class InvoiceTotals:
    currency: str
    lines: tuple[PricedLine, ...]  # the input lines in order, then the commitment true-up line if any
    usage_subtotal_minor: int  # "usage" lines only: what the minimum commitment is compared with
    commitment_true_up_minor: int
    subtotal_minor: int  # all lines, true-up included
    discounts: tuple[AppliedDiscount, ...]  # the discounts that applied, in the order applied
    discount_minor: int
    tax_minor: int
    credits_applied_minor: int
    total_minor: int


def discount_applies(discount: Discount, period_start: date, period_end: date) -> bool:
    """True when the discount's window overlaps the period [period_start, period_end).

    Exactly: valid_from <= period_end - 1 day and (valid_to is None or valid_to >= period_start).
    """
    last_day = period_end - timedelta(days=1)
    return discount.valid_from <= last_day and (
        discount.valid_to is None or discount.valid_to >= period_start
    )


def _check_date(value: Any, name: str) -> date:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime.date (not a datetime), got {value!r}")
    return value


def _check_discount(discount: Discount) -> Decimal:
    if not isinstance(discount, Discount):
        raise ValueError(f"discounts must be Discount instances, got {type(discount).__name__}")
    if discount.kind not in DISCOUNT_KINDS:
        raise ValueError(
            f"discount {discount.code!r}: kind must be one of {DISCOUNT_KINDS}, got {discount.kind!r}"
        )
    value = _num(discount.value, f"discount {discount.code!r}, value")
    if value < 0 or (discount.kind == "percentage" and value > 100):
        raise ValueError(f"discount {discount.code!r}: value out of range: {value}")
    _check_date(discount.valid_from, f"discount {discount.code!r} valid_from")
    if discount.valid_to is not None and _check_date(discount.valid_to, "valid_to") < discount.valid_from:
        raise ValueError(f"discount {discount.code!r}: valid_to is before valid_from")
    return value


def price_invoice(
    lines: Sequence[LineInput],
    *,
    currency: str,
    minimum_commitment: Decimal | None,
    tax_rate: Decimal,
    discounts: Sequence[Discount],
    period_start: date,
    period_end: date,
    credits_available_minor: int,
) -> InvoiceTotals:
    """Invoice totals for one organisation and period, in integer minor units of `currency`.

    The period is [period_start, period_end): period_end is exclusive (the 1st of the next month).
    `tax_rate` is a fraction (0.2 for 20 %, 0 <= tax_rate < 1); `minimum_commitment` is in major units.

    Order of operations (a product decision, applied exactly in this order):
    1. Each line is rounded once, half-up, to the currency's minor unit.
    2. Minimum commitment: if the sum of the rounded "usage" lines is below the commitment (itself
       rounded once), a true-up line of (commitment - that sum) is added. Late-usage lines do not
       count toward the commitment.
    3. subtotal = sum of all rounded lines, true-up included.
    4. Discounts whose validity window overlaps the period (`discount_applies`) are applied to the
       subtotal: fixed ones first, then percentage ones, each group in order of code. Each is
       computed on what remains after the previous ones, rounded once half-up, and capped at what
       remains, so the discount never exceeds the subtotal.
    5. tax = round_half_up(tax_rate x (subtotal - discount)).
    6. credits_applied = min(credits_available, subtotal - discount + tax).
    7. total = subtotal - discount + tax - credits_applied, never below zero (it follows from 4-6).
    Line amounts, the commitment, discount values, tax_rate and credits must be non-negative.
    """
    minor_unit_exponent(currency)  # validates the currency
    start = _check_date(period_start, "period_start")
    end = _check_date(period_end, "period_end")
    if end <= start:
        raise ValueError(f"period_end ({end}) must be after period_start ({start}); it is exclusive")
    rate = _num(tax_rate, "tax_rate")
    if not 0 <= rate < 1:
        raise ValueError(f"tax_rate is a fraction in [0, 1) (0.2 for 20 %), got {rate}")
    if isinstance(credits_available_minor, bool) or not isinstance(credits_available_minor, int):
        raise ValueError(f"credits_available_minor must be an int, got {credits_available_minor!r}")
    if credits_available_minor < 0:
        raise ValueError("credits_available_minor must be >= 0")

    priced: list[PricedLine] = []
    seen: set[str] = set()
    for line in lines:
        if not isinstance(line, LineInput):
            raise ValueError(f"lines must be LineInput instances, got {type(line).__name__}")
        if line.kind not in LINE_KINDS:
            raise ValueError(f"line {line.key!r}: kind must be one of {LINE_KINDS}, got {line.kind!r}")
        if line.key in seen:
            raise ValueError(f"duplicate line key {line.key!r}")
        seen.add(line.key)
        amount = _num(line.amount, f"line {line.key!r}, amount")
        if amount < 0:
            raise ValueError(f"line {line.key!r}: amount must be >= 0, got {amount}")
        priced.append(PricedLine(line.key, line.kind, amount, to_minor(amount, currency)))

    usage_subtotal = sum(p.amount_minor for p in priced if p.kind == "usage")
    true_up = 0
    if minimum_commitment is not None:
        commitment = _num(minimum_commitment, "minimum_commitment")
        if commitment < 0:
            raise ValueError("minimum_commitment must be >= 0")
        true_up = max(to_minor(commitment, currency) - usage_subtotal, 0)
        if true_up:
            priced.append(PricedLine(TRUE_UP_KIND, TRUE_UP_KIND, from_minor(true_up, currency), true_up))

    try:
        with localcontext(_EXACT):
            return _totals(
                currency,
                priced,
                usage_subtotal,
                true_up,
                discounts,
                rate,
                start,
                end,
                credits_available_minor,
            )
    except DecimalException as exc:
        raise ValueError(f"invoice totals cannot be computed exactly within 60 digits: {exc!r}") from None


def _totals(
    currency: str,
    priced: list[PricedLine],
    usage_subtotal: int,
    true_up: int,
    discounts: Sequence[Discount],
    rate: Decimal,
    start: date,
    end: date,
    credits_available_minor: int,
) -> InvoiceTotals:
    """Steps 3-7 of `price_invoice`."""
    subtotal = sum(p.amount_minor for p in priced)
    checked = [(d, _check_discount(d)) for d in discounts]
    active = [(d, v) for d, v in checked if discount_applies(d, start, end)]
    active.sort(key=lambda dv: (DISCOUNT_KINDS.index(dv[0].kind), dv[0].code))
    applied: list[AppliedDiscount] = []
    remaining = subtotal
    for discount, value in active:
        if discount.kind == "fixed":
            wanted = to_minor(value, currency)
        else:
            wanted = to_minor(from_minor(remaining, currency) * value / _HUNDRED, currency)
        amount = min(wanted, remaining)
        remaining -= amount
        applied.append(AppliedDiscount(discount.code, discount.kind, amount))
    discount_total = subtotal - remaining

    taxable = subtotal - discount_total
    tax = to_minor(rate * from_minor(taxable, currency), currency)
    credits_applied = min(credits_available_minor, taxable + tax)
    total = taxable + tax - credits_applied
    if total < 0:  # pragma: no cover - impossible: discount <= subtotal, tax >= 0, credits <= taxable + tax
        raise RuntimeError(f"negative invoice total {total}")
    return InvoiceTotals(
        currency=currency,
        lines=tuple(priced),
        usage_subtotal_minor=usage_subtotal,
        commitment_true_up_minor=true_up,
        subtotal_minor=subtotal,
        discounts=tuple(applied),
        discount_minor=discount_total,
        tax_minor=tax,
        credits_applied_minor=credits_applied,
        total_minor=total,
    )
