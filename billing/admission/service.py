"""Admission as the gateway calls it, per request:

1. :func:`output_tokens_reserve`: how many output tokens to hold;
2. :func:`admission_reserve`: hold the worst case (the estimated prompt and that output at the
   dearest candidate's list price) at every budget layer, the balance and the key's rate
   limits, in one atomic backend call; a refusal raises ``AdmissionRefused``;
3. after the call, :func:`admission_settle` charges what was used at the answering model's
   price version in force at admission and releases the rest, or :func:`admission_release`
   frees the whole hold when nothing answered.

Nothing here reads or keeps request content.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings

from billing.admission import AdmissionContext, Reservation, UsageEventData, get_backend
from billing.errors import AdmissionRefused, AdmissionUnavailable
from orgs.keys import KeyContext
from routing.catalog import CatalogSnapshot, PriceVersion
from routing.pricing import UsageLike, usage_cost, worst_case_over

logger = logging.getLogger("megarouter.billing")


def output_tokens_reserve(
    *, max_tokens: int | None, n: int, model_max_outputs: Iterable[int | None], embeddings: bool
) -> int:
    """Output tokens to hold: the request's max_tokens (times ``n`` choices), else the
    candidates' largest declared max output capped at ``MEGAROUTER_RESERVE_OUTPUT_TOKENS``.
    Embeddings produce no output tokens."""
    if embeddings:
        return 0
    n = max(1, n)
    if max_tokens:
        return max_tokens * n
    cap = int(settings.MEGAROUTER_RESERVE_OUTPUT_TOKENS)
    declared = max((m for m in model_max_outputs if m), default=None)
    return min(declared, cap) * n if declared else cap * n


async def admission_reserve(
    *,
    charge_id: str,
    key: KeyContext,
    prices: Iterable[PriceVersion | None],
    input_tokens: int,
    output_tokens: int,
) -> Reservation:
    """Hold the worst case over the candidates' prices. Raises ``AdmissionRefused`` (a budget,
    the balance, a rate limit), and ``AdmissionUnavailable`` when the counters' store cannot
    be reached: a request is refused rather than run unmetered."""
    amount = worst_case_over(prices, input_tokens=input_tokens, output_tokens=output_tokens)
    try:
        return await get_backend().reserve(
            charge_id,
            AdmissionContext.from_key_context(key),
            amount,
            input_tokens + output_tokens,
        )
    except AdmissionRefused:
        raise
    except Exception as exc:
        logger.error(
            "admission failed",
            extra={"fields": {"request_id": charge_id, "error_type": type(exc).__qualname__}},
        )
        raise AdmissionUnavailable() from exc


async def admission_settle(
    reservation: Reservation,
    *,
    snapshot: CatalogSnapshot,
    model_id: str,
    list_price: PriceVersion | None,
    usage: UsageLike,
    event: UsageEventData,
) -> Decimal:
    """Charge ``usage`` at ``model_id``'s price version in force when the hold was made (the
    current ``list_price`` if the catalog has none for that moment), release the rest and
    record the usage event. Returns the amount charged. A closed hold is left alone."""
    if reservation.closed:
        return Decimal(0)
    try:
        version = snapshot.price_at(model_id, reservation.created_at)
    except LookupError:
        version = None
    price = version or list_price
    cost = usage_cost(price, usage) if price is not None else Decimal(0)
    event.price_version_id = version.id if version is not None else None
    await get_backend().settle(reservation, cost, event)
    return cost


async def admission_release(reservation: Reservation) -> None:
    """Nothing answered: free the whole hold (nothing is charged)."""
    if not reservation.closed:
        await get_backend().release(reservation)
