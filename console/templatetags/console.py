"""Template filters for money: exact Decimal amounts, never floats, no trailing zeros beyond
the cents (``usd``: ``$0.0042``, ``$12.50``; ``signed_usd``: ``+$250.00``, ``\u2212$0.30``)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()


def _plain(value: Any) -> tuple[bool, str] | None:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite():
        return None
    text = format(abs(amount).normalize(), "f")
    whole, _, frac = text.partition(".")
    frac = frac.ljust(2, "0")
    return amount < 0, f"{int(whole):,}.{frac}"


@register.filter
def usd(value: Any) -> str:
    parts = _plain(value)
    if parts is None:
        return ""
    negative, text = parts
    return f"\u2212${text}" if negative else f"${text}"


@register.filter
def signed_usd(value: Any) -> str:
    parts = _plain(value)
    if parts is None:
        return ""
    negative, text = parts
    return f"\u2212${text}" if negative else f"+${text}"
