"""Pricing: the one function that turns usage into money, and worst-case estimates.

No markup: a request costs its tokens times the catalog list price in force (a
``routing.catalog.PriceVersion`` from the snapshot, or a ``routing.models.ModelPrice`` row;
both have the same fields).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol

PLACES = Decimal("0.000000000001")  # 12 places, as stored
ZERO = Decimal(0)


class PriceLike(Protocol):
    """A catalog price version; the optional per-token prices may be absent (None)."""

    input_per_token: Decimal
    output_per_token: Decimal


def quantize(amount: Decimal) -> Decimal:
    """Round up to the stored 12 places (never under-charge by rounding)."""
    return amount.quantize(PLACES, rounding=ROUND_CEILING)


def usage_cost(price_version: PriceLike, usage: Any) -> Decimal:
    """The cost of ``usage`` (a ``gateway.providers.types.Usage``) at ``price_version``.

    - prompt tokens: cached ones at the cached-input price, cache writes at the cache-write
      price (each the input price when the model has none), the rest at the input price;
    - completion tokens: at the output price, except reasoning tokens at the reasoning price
      where the provider bills them apart.
    """
    prompt = int(usage.prompt_tokens)
    completion = int(usage.completion_tokens)
    cached = min(int(getattr(usage, "cached_tokens", 0) or 0), prompt)
    cache_write = min(int(getattr(usage, "cache_write_tokens", 0) or 0), prompt - cached)
    reasoning = min(int(getattr(usage, "reasoning_tokens", 0) or 0), completion)
    if min(prompt, completion) < 0:
        raise ValueError("token counts cannot be negative")
    p = price_version
    cached_price = getattr(p, "cached_input_per_token", None)
    write_price = getattr(p, "cache_write_per_token", None)
    reasoning_price = getattr(p, "reasoning_per_token", None)
    cost = (prompt - cached - cache_write) * p.input_per_token
    cost += cached * (cached_price if cached_price is not None else p.input_per_token)
    cost += cache_write * (write_price if write_price is not None else p.input_per_token)
    if reasoning_price is not None and reasoning:
        cost += (completion - reasoning) * p.output_per_token + reasoning * reasoning_price
    else:
        cost += completion * p.output_per_token
    return quantize(Decimal(cost))


def estimate_input_tokens(*, chars: int, messages: int = 1) -> int:
    """A cheap upper-leaning estimate of prompt tokens from characters (about 3 characters a
    token, plus per-message overhead), for reservations before the provider counts."""
    return math.ceil(max(chars, 0) / 3) + 4 * max(messages, 1) + 3


def estimate_worst_case(
    *, prices: Iterable[PriceLike], input_tokens: int, max_output_tokens: int
) -> Decimal:
    """The most a request can cost on any of its candidate deployments: input tokens at the
    input price plus ``max_output_tokens`` at the output (or reasoning, if dearer) price, at
    the most expensive candidate."""
    worst = ZERO
    for p in prices:
        out_price = p.output_per_token
        reasoning_price = getattr(p, "reasoning_per_token", None)
        if reasoning_price is not None and reasoning_price > out_price:
            out_price = reasoning_price
        in_price = p.input_per_token
        write_price = getattr(p, "cache_write_per_token", None)
        if write_price is not None and write_price > in_price:
            in_price = write_price
        cost = input_tokens * in_price + max_output_tokens * out_price
        worst = max(worst, cost)
    return quantize(worst)
