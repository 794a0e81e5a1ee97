"""Billing in the hot path: the gateway's ``admit`` / ``settle`` steps.

Installed into :data:`gateway.pipeline.STEPS` by ``GatewayConfig.ready`` (dependencies point
gateway -> billing; billing never imports the gateway). Per request:

- ``admit`` reserves the worst case: the estimated prompt (``ctx.input_tokens_estimate``, set
  by :func:`gateway.pipeline.prepare` from :func:`input_tokens_estimate`) plus the output
  ceiling (:func:`output_tokens_reserve`) at the dearest candidate's list price, against every
  budget that applies, the balance and the key's rate limits, in one atomic backend call.
  Refusals become the OpenAI error object (:func:`refusal_error`) and are counted in
  ``megarouter_budget_refusals{layer}``.
- ``settle`` charges the answering deployment's model at the price version in force at
  admission and releases the rest; nothing answered -> the hold is released, nothing charged.
  A stream that ended early without a usage report is charged the estimated prompt plus the
  output actually relayed.

Nothing here reads or keeps request content beyond character counts.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import orjson
from django.conf import settings

from billing import gateway_steps
from billing.admission import AdmissionContext, get_backend
from billing.errors import (
    AdmissionRefused,
    AdmissionUnavailable,
    BalanceExhausted,
    BudgetExceeded,
)
from billing.errors import RateLimited as BillingRateLimited
from billing.pricing import usage_cost
from gateway import metrics
from gateway.errors import GatewayError, PaymentRequired, RateLimited, describe_exception
from gateway.providers.types import ChatRequest, EmbeddingRequest, Usage

logger = logging.getLogger("megarouter.gateway")

# Prompt tokens an image costs at most in the estimate: OpenAI's tiling of a 2048 x 768
# high-detail image (85 + 170 x 6); "low" detail is a flat 85.
IMAGE_TOKENS = 1105
IMAGE_TOKENS_LOW = 85
MESSAGE_OVERHEAD = 4  # role and framing tokens per message
REQUEST_OVERHEAD = 3  # the reply primer
DEFAULT_OUTPUT_RESERVE = 4096  # without max_tokens: the model's max output, capped at this


# ---------------------------------------------------------------- estimates


def input_tokens_estimate(request: ChatRequest | EmbeddingRequest) -> int:
    """A cheap prompt-size estimate (characters / 4, rounded up) over message text, tool
    calls, tool definitions, the response schema and images (fixed tokens per image). Reads
    lengths only."""
    if isinstance(request, EmbeddingRequest):
        chars = 0
        tokens = 0
        for item in request.input:
            if isinstance(item, str):
                chars += len(item)
            else:
                tokens += len(item)  # already token ids
        return tokens + math.ceil(chars / 4)
    chars = 0
    fixed = REQUEST_OVERHEAD
    for message in request.messages:
        fixed += MESSAGE_OVERHEAD
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif content:
            for part in content:
                if part.type == "image":
                    fixed += IMAGE_TOKENS_LOW if part.detail == "low" else IMAGE_TOKENS
                elif part.text:
                    chars += len(part.text)
        if message.name:
            chars += len(message.name)
        for call in message.tool_calls or ():
            chars += len(call.name) + len(call.arguments or "")
        if message.refusal:
            chars += len(message.refusal)
    for tool in request.tools or ():
        chars += len(tool.name) + len(tool.description or "")
        if tool.parameters:
            chars += len(orjson.dumps(tool.parameters))
    if request.response_format is not None and request.response_format.schema:
        chars += len(orjson.dumps(request.response_format.schema))
    return fixed + math.ceil(chars / 4)


async def _model_max_output(model_ids: set[str]) -> int | None:
    """The largest declared max output among the candidates' models (None: none declared)."""
    from routing.catalog import UnknownModel, acatalog_snapshot

    snapshot = await acatalog_snapshot()
    best: int | None = None
    for model_id in model_ids:
        try:
            declared = snapshot.resolve(model_id).max_output_tokens
        except (UnknownModel, LookupError):
            continue
        if declared:
            best = declared if best is None else max(best, declared)
    return best


async def output_tokens_reserve(ctx: Any, plan: Any) -> int:
    """Output tokens to reserve: the request's max_tokens (times ``n``), else the candidates'
    largest declared max output capped at ``MEGAROUTER_RESERVE_OUTPUT_TOKENS`` (4096): a
    longer answer is still charged in full at settle. Embeddings produce no output tokens."""
    if ctx.route == "embeddings":
        return 0
    n = max(1, int(getattr(ctx, "n", 1) or 1))
    if ctx.max_tokens:
        return int(ctx.max_tokens) * n
    cap = int(getattr(settings, "MEGAROUTER_RESERVE_OUTPUT_TOKENS", DEFAULT_OUTPUT_RESERVE))
    declared = await _model_max_output({c.model_id for c in plan.candidates})
    return min(declared, cap) * n if declared else cap * n


# ---------------------------------------------------------------- refusals


def refusal_error(exc: AdmissionRefused) -> GatewayError:
    """The OpenAI error object for an admission refusal (and its metric label)."""
    error: GatewayError
    if isinstance(exc, BudgetExceeded):
        error = RateLimited(
            f"The {exc.layer} budget (id {exc.budget_id}) does not allow this request: its "
            "limit for the current period is reached. Raise the limit or wait for the next "
            "period.",
            code="budget_exceeded",
        )
        error.headers["x-megarouter-budget-layer"] = exc.layer
        error.headers["x-should-retry"] = "false"  # the SDKs' automatic retries cannot help
        return error
    if isinstance(exc, BalanceExhausted):
        error = PaymentRequired(
            "The organization's prepaid balance does not cover this request. Top up the "
            "balance to continue.",
            code="insufficient_balance",
        )
        error.headers["x-should-retry"] = "false"
        return error
    if isinstance(exc, BillingRateLimited):
        return RateLimited(
            f"This key's {exc.limit}-per-minute limit is reached. Retry after "
            f"{exc.retry_after} seconds.",
            retry_after=exc.retry_after,
            code="rate_limited",
        )
    retry_after = getattr(exc, "retry_after", None) or 1
    return GatewayError(
        "Budget admission is momentarily unavailable; retry shortly.",
        status=503,
        code="admission_unavailable",
        headers={"retry-after": str(max(1, int(retry_after)))},
    )


def _layer(exc: AdmissionRefused) -> str:
    if isinstance(exc, BudgetExceeded):
        return exc.layer
    if isinstance(exc, BalanceExhausted):
        return "balance"
    if isinstance(exc, BillingRateLimited):
        return "rate_limit"
    return "admission_unavailable"


# ---------------------------------------------------------------- the steps


async def admit(*, ctx: Any, plan: Any) -> Any:
    """Reserve the worst case over the plan's candidates; raise the gateway error on refusal.
    A backend failure (Redis or the database unreachable) fails closed: 503."""
    if ctx.input_tokens_estimate is None:
        ctx.input_tokens_estimate = gateway_steps.DEFAULT_INPUT_ESTIMATE
    input_tokens = int(ctx.input_tokens_estimate)
    output_tokens = await output_tokens_reserve(ctx, plan)
    ctx.output_tokens_reserve = output_tokens
    amount = gateway_steps.worst_case_for(
        plan.candidates, input_tokens=input_tokens, max_output_tokens=output_tokens
    )
    if not ctx.charge_id:
        ctx.charge_id = uuid.uuid4().hex if ctx.client_request_id else ctx.request_id
    try:
        return await get_backend().reserve(
            ctx.charge_id,
            AdmissionContext.from_key_context(ctx.key),
            amount,
            input_tokens + output_tokens,
        )
    except AdmissionRefused as exc:
        metrics.BUDGET_REFUSALS.labels(_layer(exc)).inc()
        raise refusal_error(exc) from None
    except Exception as exc:  # the counters' store is down: refuse rather than run unmetered
        fields = {"request_id": ctx.request_id, **describe_exception(exc)}
        logger.error("admission failed", extra={"fields": fields})
        metrics.BUDGET_REFUSALS.labels("admission_unavailable").inc()
        raise refusal_error(AdmissionUnavailable()) from None


async def _price_version(model_id: str, when: Any) -> Any:
    from routing.catalog import UnknownModel, acatalog_snapshot

    try:
        return (await acatalog_snapshot()).price_at(model_id, when)
    except (UnknownModel, LookupError):
        return None


async def settle(*, ctx: Any) -> None:
    """Charge what was used at the answering model's price version in force at admission;
    release the rest (all of it when nothing answered). Writes the usage event (metadata,
    with the routing decision's explanation) and sets ``ctx.cost`` to the amount charged."""
    reservation = ctx.admission
    if reservation is None or reservation.closed:
        return
    backend = get_backend()
    if ctx.chosen is None:
        await backend.release(reservation)
        return
    if ctx.usage is None:
        # A stream that ended early (client gone, upstream broke) without a usage report: the
        # provider billed the prompt and what it generated; charge the same estimate.
        ctx.usage = Usage(
            prompt_tokens=int(ctx.input_tokens_estimate or 0),
            completion_tokens=ctx.generated_tokens(),
        )
    version = await _price_version(ctx.chosen.model_id, reservation.created_at)
    cost = usage_cost(version if version is not None else ctx.chosen, ctx.usage)
    ctx.cost = cost
    event = gateway_steps.usage_event_for(
        ctx, price_version_id=getattr(version, "id", None), usage=ctx.usage
    )
    if ctx.route_explain is not None:
        event.routing["explain"] = ctx.route_explain
    await backend.settle(reservation, cost, event)


def install() -> None:
    """Plug admission and settlement into the pipeline (``GatewayConfig.ready``)."""
    from gateway import pipeline

    pipeline.STEPS.admit = admit
    pipeline.STEPS.settle = settle
