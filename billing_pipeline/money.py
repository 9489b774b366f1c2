"""Money: ISO 4217 minor units, exact decimal parsing, one half-up rounding. Never a float.

Amounts at rest are integers in the currency's minor unit (cents for USD, yen for JPY, fils for
KWD); amounts in computation are `Decimal`. `to_minor` is the one place where a Decimal amount
becomes minor units: it rounds once, ROUND_HALF_UP (a tie goes away from zero: 0.005 USD -> 1 cent,
-0.005 USD -> -1 cent).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext
from types import MappingProxyType

__all__ = [
    "MINOR_UNIT_EXPONENTS",
    "is_valid_currency",
    "minor_unit_exponent",
    "to_minor",
    "from_minor",
    "parse_decimal",
]

# ISO 4217 minor-unit exponents (number of decimal places) of the currencies the product supports.
# Codes are the canonical upper-case form; that is what is stored and what `is_valid_currency` accepts.
_ZERO_DECIMALS = (
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
)  # fmt: skip
_THREE_DECIMALS = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
_TWO_DECIMALS = (
    "AED", "ARS", "AUD", "BDT", "BGN", "BRL", "CAD", "CHF", "CNY", "COP", "CZK", "DKK", "DZD",
    "EGP", "EUR", "GBP", "GEL", "GHS", "HKD", "HUF", "IDR", "ILS", "INR", "JMD", "KES", "KZT",
    "LKR", "MAD", "MXN", "MYR", "NGN", "NOK", "NPR", "NZD", "PEN", "PHP", "PKR", "PLN", "QAR",
    "RON", "RSD", "RUB", "SAR", "SEK", "SGD", "THB", "TRY", "TWD", "TZS", "UAH", "USD", "UYU",
    "UZS", "VES", "ZAR", "ZMW",
)  # fmt: skip

MINOR_UNIT_EXPONENTS: Mapping[str, int] = MappingProxyType(
    {**{c: 0 for c in _ZERO_DECIMALS}, **{c: 2 for c in _TWO_DECIMALS}, **{c: 3 for c in _THREE_DECIMALS}}
)

# Wide enough that no realistic amount is ever rounded by the context itself; the only rounding is
# the explicit quantize in `to_minor`.
_CTX = Context(prec=60, rounding=ROUND_HALF_UP)

_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def is_valid_currency(code: object) -> bool:
    """True for a supported ISO 4217 code in its canonical upper-case form ("USD", not "usd")."""
    return isinstance(code, str) and code in MINOR_UNIT_EXPONENTS


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3); ValueError if unsupported."""
    if not is_valid_currency(currency):
        hint = (
            " (currency codes are upper case)"
            if isinstance(currency, str) and currency.upper() in MINOR_UNIT_EXPONENTS
            else ""
        )
        raise ValueError(f"unsupported currency {currency!r}{hint}")
    return MINOR_UNIT_EXPONENTS[currency]


def parse_decimal(text: object) -> Decimal:
    """Parse an exact decimal from text (or an int or a Decimal); refuse floats, NaN and Infinity.

    Accepts plain decimal notation with an optional sign and exponent ("12", "-0.5", "1.2e3"),
    surrounding whitespace allowed. A float is refused because it has already lost exactness
    (0.1 is not 1/10); pass the value as a string instead.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a decimal: {text!r} (a boolean)")
    if isinstance(text, float):
        raise ValueError(
            f"floats are not accepted for money or quantities: {text!r}; pass a string like '{text}'"
        )
    if isinstance(text, int):
        return Decimal(text)
    if isinstance(text, Decimal):
        if not text.is_finite():
            raise ValueError(f"not a finite decimal: {text!r}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"not a decimal: {text!r} (type {type(text).__name__})")
    stripped = text.strip()
    if not _DECIMAL_TEXT.fullmatch(stripped):
        raise ValueError(f"not a decimal: {text!r} (NaN, Infinity and other non-numbers are refused)")
    try:
        return Decimal(stripped)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already excludes these
        raise ValueError(f"not a decimal: {text!r}") from exc


def to_minor(amount: Decimal, currency: str) -> int:
    """Round `amount` (major units) once, half-up, to the currency's minor unit; return it as an int.

    to_minor(Decimal("12.345"), "USD") == 1235; to_minor(Decimal("0.5"), "JPY") == 1;
    to_minor(Decimal("1.2345"), "KWD") == 1235.
    """
    exponent = minor_unit_exponent(currency)
    value = parse_decimal(amount)
    with localcontext(_CTX):
        return int(value.scaleb(exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_minor(minor: int, currency: str) -> Decimal:
    """Minor units (int) to a Decimal in major units with the currency's exponent: 1235 USD -> 12.35."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise ValueError(f"minor units must be an int, got {minor!r}")
    exponent = minor_unit_exponent(currency)
    with localcontext(_CTX):
        return Decimal(minor).scaleb(-exponent)
