"""Admission as the gateway calls it, per request:

1. :func:`admission_reserve`: hold the prompt's bound and the output the request may produce
   (its ``max_tokens``, else the model's maximum lowered to what the tightest layer can pay)
   at the dearest candidate's list price, at every budget layer, the balance and the key's
   rate limits, in one atomic backend call; a refusal raises ``AdmissionRefused``. The
   reservation's ``output_tokens`` is the most the provider may produce: the gateway sends it
   upstream as the request's limit, so the hold is the ceiling of the charge;
2. while a stream is relayed, :func:`admission_progress` checkpoints what it relayed on the
   hold (a dead process's stream is charged from it by reconciliation);
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

from billing.admission import (
    AdmissionContext,
    HoldRequest,
    Reservation,
    UsageEventData,
    get_backend,
)
from billing.admission.base import progress_terms
from billing.errors import AdmissionRefused, AdmissionUnavailable
from orgs.keys import KeyContext
from routing.catalog import CatalogSnapshot, PriceVersion
from routing.pricing import UsageLike, usage_cost, worst_case_prices

logger = logging.getLogger("megarouter.billing")

UNDECLARED_MAX_OUTPUT = 4096  # a model that declares no maximum output


def output_tokens_wanted(
    *, max_tokens: int | None, n: int, model_max_outputs: Iterable[int | None], embeddings: bool
) -> int:
    """The output a request may produce: its max_tokens (times ``n`` choices), else the
    largest maximum output its candidates declare (capped by
    ``MEGAROUTER_MAX_OUTPUT_TOKENS`` when the operator set one). Embeddings: none."""
    if embeddings:
        return 0
    n = max(1, n)
    if max_tokens:
        return max_tokens * n
    declared = max((m for m in model_max_outputs if m), default=UNDECLARED_MAX_OUTPUT)
    cap = int(settings.MEGAROUTER_MAX_OUTPUT_TOKENS)
    return (min(declared, cap) if cap else declared) * n


async def admission_reserve(
    *,
    charge_id: str,
    key: KeyContext,
    prices: Iterable[PriceVersion | None],
    input_tokens: int,
    output_tokens: int,
    exact: bool,
    n: int = 1,
    tags: tuple[str, ...] = (),
) -> Reservation:
    """Hold the worst case over the candidates' prices: ``input_tokens`` (an upper bound of
    the prompt) and ``output_tokens`` (all of them when ``exact``, else as many as the tightest
    layer pays for, down to ``MEGAROUTER_MIN_OUTPUT_TOKENS`` per choice). Raises
    ``AdmissionRefused`` (a budget, the balance, a rate limit), and ``AdmissionUnavailable``
    when the counters' store cannot be reached: a request is refused rather than run
    unmetered. ``tags``: the request's tags as "key=value" (tag budgets apply by them)."""
    in_price, out_price = worst_case_prices(prices)
    hold = HoldRequest(
        input_amount=in_price * input_tokens,
        output_price=out_price,
        output_tokens=output_tokens,
        exact=exact or output_tokens == 0,
        input_tokens=input_tokens,
        min_output=min(output_tokens, int(settings.MEGAROUTER_MIN_OUTPUT_TOKENS) * max(1, n)),
    )
    try:
        context = AdmissionContext.from_key_context(key, tags)
        return await get_backend().reserve(charge_id, context, hold)
    except AdmissionRefused:
        raise
    except Exception as exc:
        logger.error(
            "admission failed",
            extra={"fields": {"request_id": charge_id, "error_type": type(exc).__name__}},
        )
        raise AdmissionUnavailable() from exc


async def admission_progress(
    reservation: Reservation,
    *,
    output_tokens: int,
    event: UsageEventData | None = None,
    price: PriceVersion | None = None,
) -> bool:
    """Checkpoint a stream's relayed output on its hold; the first checkpoint also says how
    to charge it (``event``, ``price``) should the process die before it settles. False when
    the write failed (logged: a missed checkpoint only makes a crash charge less)."""
    backend = get_backend()
    terms = None
    if event is not None and price is not None:
        terms = progress_terms(reservation, event, price, db_held=backend.name == "db")
    try:
        await backend.progress(reservation, output_tokens, terms)
    except Exception as exc:
        logger.warning(
            "progress checkpoint failed",
            extra={"fields": {"request_id": reservation.request_id, "error": type(exc).__name__}},
        )
        return False
    return True


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
    record the usage event. Returns the amount charged. A closed hold is left alone.

    The charge never exceeds the hold: the hold covers the prompt's upper bound and the output
    limit sent upstream, so a larger cost means a provider went past the limit it was given,
    which the budget does not pay for (logged; the usage record keeps the tokens reported)."""
    if reservation.closed:
        return Decimal(0)
    try:
        version = snapshot.price_at(model_id, reservation.created_at)
    except LookupError:
        version = None
    price = version or list_price
    cost = usage_cost(price, usage) if price is not None else Decimal(0)
    if cost > reservation.amount:
        logger.warning(
            "charge above the hold capped",
            extra={
                "fields": {
                    "request_id": reservation.request_id,
                    "cost": str(cost),
                    "held": str(reservation.amount),
                }
            },
        )
        cost = reservation.amount
    event.price_version_id = version.id if version is not None else None
    await get_backend().settle(reservation, cost, event)
    return cost


async def admission_release(reservation: Reservation) -> None:
    """Nothing answered: free the whole hold (nothing is charged)."""
    if not reservation.closed:
        await get_backend().release(reservation)
