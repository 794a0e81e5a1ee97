"""Pricing: the one function that turns usage into money, and the one worst case.

No markup: a request costs its tokens times the catalog list price in force (a
``routing.catalog.PriceVersion`` from the snapshot, or a ``routing.models.ModelPrice`` row;
both have the same fields). Billing charges with :func:`usage_cost`; admission holds
:func:`worst_case_cost` over the candidates; the router filters on the same worst case
(``max_cost_per_request_usd``) and explains with the same prices.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_CEILING, Decimal
from typing import Protocol

PLACES = Decimal("0.000000000001")  # 12 places, as stored
ZERO = Decimal(0)


class PriceLike(Protocol):
    """A catalog price version; the optional per-token prices may be None."""

    input_per_token: Decimal
    output_per_token: Decimal
    cached_input_per_token: Decimal | None
    cache_write_per_token: Decimal | None
    reasoning_per_token: Decimal | None


class UsageLike(Protocol):
    """Token counts as providers report them (``gateway.providers.types.Usage``)."""

    prompt_tokens: int  # all input tokens, cached and cache writes included
    completion_tokens: int  # all output tokens, reasoning included
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


def quantize(amount: Decimal) -> Decimal:
    """Round up to the stored 12 places (never under-charge by rounding)."""
    return amount.quantize(PLACES, rounding=ROUND_CEILING)


def usage_cost(price: PriceLike, usage: UsageLike) -> Decimal:
    """The cost of ``usage`` at ``price``.

    - prompt tokens: cached ones at the cached-input price, cache writes at the cache-write
      price (each the input price when the model has none), the rest at the input price;
    - completion tokens: at the output price, except reasoning tokens at the reasoning price
      where the model has one.
    """
    prompt = int(usage.prompt_tokens)
    completion = int(usage.completion_tokens)
    if min(prompt, completion) < 0:
        raise ValueError("token counts cannot be negative")
    cached = min(int(usage.cached_tokens or 0), prompt)
    written = min(int(usage.cache_write_tokens or 0), prompt - cached)
    reasoning = min(int(usage.reasoning_tokens or 0), completion)
    cached_price = _or(price.cached_input_per_token, price.input_per_token)
    write_price = _or(price.cache_write_per_token, price.input_per_token)
    reasoning_price = _or(price.reasoning_per_token, price.output_per_token)
    cost = (
        (prompt - cached - written) * price.input_per_token
        + cached * cached_price
        + written * write_price
        + (completion - reasoning) * price.output_per_token
        + reasoning * reasoning_price
    )
    return quantize(Decimal(cost))


def worst_case_cost(price: PriceLike, *, input_tokens: int, output_tokens: int) -> Decimal:
    """The most ``input_tokens`` in and ``output_tokens`` out can cost at ``price``: every
    input token at the dearer of the input and cache-write prices, every output token at the
    dearer of the output and reasoning prices."""
    in_price = max(price.input_per_token, _or(price.cache_write_per_token, ZERO))
    out_price = max(price.output_per_token, _or(price.reasoning_per_token, ZERO))
    return quantize(Decimal(input_tokens * in_price + output_tokens * out_price))


def worst_case_prices(prices: Iterable[PriceLike | None]) -> tuple[Decimal, Decimal]:
    """(input, output) price per token of the worst case over ``prices``: the dearest input
    (or cache-write) and the dearest output (or reasoning) price among them."""
    in_price = out_price = ZERO
    for p in prices:
        if p is None:
            continue
        in_price = max(in_price, p.input_per_token, _or(p.cache_write_per_token, ZERO))
        out_price = max(out_price, p.output_per_token, _or(p.reasoning_per_token, ZERO))
    return in_price, out_price


def worst_case_over(
    prices: Iterable[PriceLike | None], *, input_tokens: int, output_tokens: int
) -> Decimal:
    """:func:`worst_case_cost` at the dearest of ``prices`` (an unpriced model costs 0)."""
    return max(
        (
            worst_case_cost(p, input_tokens=input_tokens, output_tokens=output_tokens)
            for p in prices
            if p is not None
        ),
        default=ZERO,
    )


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value
