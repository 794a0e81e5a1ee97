"""How money reads, on every page and in the PDF: one formatter.

``usd_text`` shows an amount with at least the cents and at least ``SIGNIFICANT`` significant
digits, so sub-cent amounts stay readable (``$0.00222``, not ``$0.00`` or
``$0.002219612345``), rounded half-even, trailing zeros beyond the cents dropped, thousands
separated, never in scientific notation: ``$12.50``, ``$1,234.57``, ``$1.797``, ``$0.0042``,
``$0.000001``, ``\u2212$0.30``. ``usd_exact`` is the stored value to its last digit (12
places), for titles, totals that must add up, and files. ``plain_decimal`` is what a form
field shows for a stored amount (``50``, not ``5E+1``).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

SIGNIFICANT = 4
MINUS = "\u2212"


def as_decimal(value: Any) -> Decimal | None:
    """``value`` as a finite Decimal (floats through their shortest repr), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return amount if amount.is_finite() else None


def _digits(amount: Decimal) -> str:
    """|amount| with max(2, enough for SIGNIFICANT significant digits) decimals, trailing
    zeros beyond the cents dropped, thousands separated."""
    magnitude = abs(amount)
    if magnitude == 0:
        return "0.00"
    exponent = magnitude.adjusted()  # floor(log10)
    places = max(2, SIGNIFICANT - 1 - exponent)
    rounded = magnitude.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    whole, _, frac = format(rounded, "f").partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{int(whole):,}.{frac}"


def usd_text(value: Any, *, sign: bool = False) -> str:
    """The amount for people (see the module docstring); "" for a non-number. ``sign``: a
    leading + on positive amounts (movements)."""
    amount = as_decimal(value)
    if amount is None:
        return ""
    text = _digits(amount)
    if amount < 0 and text.strip("0.,"):
        return f"{MINUS}${text}"
    return f"+${text}" if sign and amount > 0 else f"${text}"


def usd_exact(value: Any) -> str:
    """The stored amount to 12 places (``$0.002219612345``); "" for a non-number."""
    amount = as_decimal(value)
    if amount is None:
        return ""
    text = f"{abs(amount):,.12f}"
    return f"{MINUS}${text}" if amount < 0 else f"${text}"


def plain_decimal(value: Any) -> str:
    """A stored amount as a form field shows it: plain digits, no exponent, no trailing
    zeros (``50``, ``0.000001``, ``12.5``)."""
    amount = as_decimal(value)
    if amount is None:
        return ""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"
