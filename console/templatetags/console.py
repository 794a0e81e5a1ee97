"""Template filters for money, through the one formatter (``billing.money``): ``usd`` reads
(``$0.0042``, ``$12.50``, ``$0.00222``), ``signed_usd`` for movements (``+$250.00``,
``\u2212$0.30``), ``usd_exact`` the stored value to its last digit (for titles)."""

from __future__ import annotations

from typing import Any

from django import template

from billing.money import usd_exact as exact_text
from billing.money import usd_text

register = template.Library()


@register.filter
def usd(value: Any) -> str:
    return usd_text(value)


@register.filter
def signed_usd(value: Any) -> str:
    return usd_text(value, sign=True)


@register.filter
def usd_exact(value: Any) -> str:
    return exact_text(value)
