"""The gateway's admit / settle steps, ready to install in ``gateway.pipeline.STEPS``.

The gateway owns the pipeline and its types; billing does not import them (dependencies point
gateway -> billing). These functions read the documented attributes of the gateway's
``CallContext`` / ``RoutePlan`` / ``Candidate``. To wire them (gateway side)::

    from billing import gateway_steps
    STEPS.admit = gateway_steps.admit
    STEPS.settle = gateway_steps.settle

and map ``billing.errors.AdmissionRefused`` to the gateway's error object: ``exc.http_status``
(429 budget_exceeded / rate_limited, 402 insufficient_balance, 503 admission_unavailable),
``exc.code``, ``exc.message``, and ``exc.retry_after`` where present (Retry-After header).

``settle`` sets ``ctx.cost`` to the charged amount (quantized to 12 places at the catalog price
version in force), so the ``x-megarouter-cost-usd`` header, the usage record and the ledger
agree to the last digit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from billing.admission import AdmissionContext, Reservation, UsageEventData, get_backend
from billing.pricing import estimate_worst_case, usage_cost


@dataclass(frozen=True, slots=True)
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


DEFAULT_MAX_OUTPUT = 4096  # reserved when the request sets no max_tokens
DEFAULT_INPUT_ESTIMATE = 1024  # when the gateway did not estimate the prompt size


async def admit(*, ctx: Any, plan: Any) -> Reservation:
    """Reserve the worst case over the plan's candidates. Raises AdmissionRefused."""
    input_tokens = int(getattr(ctx, "input_tokens_estimate", None) or DEFAULT_INPUT_ESTIMATE)
    max_output = int(ctx.max_tokens or DEFAULT_MAX_OUTPUT)
    amount = estimate_worst_case(
        prices=plan.candidates, input_tokens=input_tokens, max_output_tokens=max_output
    )
    return await get_backend().reserve(
        ctx.request_id,
        AdmissionContext.from_key_context(ctx.key),
        amount,
        input_tokens + max_output,
    )


async def _price_version(model_id: str, when: Any) -> Any:
    from routing.catalog import UnknownModel, acatalog_snapshot

    try:
        snapshot = await acatalog_snapshot()
        return snapshot.price_at(model_id, when)
    except (UnknownModel, LookupError):
        return None


def usage_event_for(ctx: Any, *, price_version_id: int | None, usage: Any) -> UsageEventData:
    attempts = list(getattr(ctx, "attempts", []) or [])
    chosen = ctx.chosen
    plan = ctx.plan
    # The route step resolved the effective policy's reference model (nearest level wins, the
    # request's override included); a route without it (the interim router) uses the default.
    reference = getattr(ctx, "reference_model", "") or str(
        settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL
    )
    return UsageEventData(
        requested_model=ctx.requested_model or "",
        model=chosen.model_id if chosen else "",
        provider=chosen.provider if chosen else "",
        deployment=chosen.deployment if chosen else "",
        strategy=plan.strategy if plan is not None else "",
        tokens_in=int(usage.prompt_tokens),
        tokens_out=int(usage.completion_tokens),
        tokens_cached=int(usage.cached_tokens),
        price_version_id=price_version_id,
        latency_ms=int((time.perf_counter() - ctx.started) * 1000),
        ttft_ms=int(ctx.ttft_seconds * 1000) if ctx.ttft_seconds is not None else None,
        status="ok" if getattr(ctx, "finished", True) else "incomplete",
        attempts=max(1, len(attempts)),
        fallback_used=any(a.error for a in attempts),
        reference_model=reference,
        routing={
            "strategy": plan.strategy if plan is not None else "",
            "candidates": [c.deployment for c in (plan.candidates if plan else [])][:10],
            "chosen": chosen.deployment if chosen else None,
            "attempts": [
                {"deployment": a.deployment, "error": a.error, "status": a.status} for a in attempts
            ][:10],
        },
    )


async def settle(*, ctx: Any) -> None:
    """Charge what was used (release the hold when nothing answered). Awaited by the
    gateway before the request task ends; shielded from cancellation there."""
    reservation: Reservation | None = ctx.admission
    if reservation is None or reservation.closed:
        return
    backend = get_backend()
    if ctx.chosen is None:
        await backend.release(reservation)
        return
    usage = ctx.usage
    if usage is None:  # a stream that ended early without a usage report: estimate output
        usage = _Usage(completion_tokens=ctx.generated_tokens())
    version = await _price_version(ctx.chosen.model_id, reservation.created_at)
    price = version if version is not None else ctx.chosen
    cost = usage_cost(price, usage)
    ctx.cost = cost
    await backend.settle(
        reservation,
        cost,
        usage_event_for(ctx, price_version_id=getattr(version, "id", None), usage=usage),
    )


def worst_case_for(candidates: list[Any], *, input_tokens: int, max_output_tokens: int) -> Decimal:
    """The amount ``admit`` reserves, for callers that want to show it."""
    return estimate_worst_case(
        prices=candidates, input_tokens=input_tokens, max_output_tokens=max_output_tokens
    )
