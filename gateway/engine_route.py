"""The routing engine as the gateway's ``route`` step, ready to install in
``gateway.pipeline.STEPS`` (it replaces ``gateway.routing_interim``)::

    from gateway.engine_route import route_engine
    STEPS.route = route_engine

It turns the call into a ``routing.engine.RouteRequest`` (features of the messages, never
stored), resolves the effective policy for the key and the request's ``megarouter`` object
(``routing.policies``, in-process), routes, and returns the gateway's ``RoutePlan``: one
``Candidate`` per routed deployment, with its endpoint (decrypted credential from the catalog
snapshot) and the prices in force. ``route_engine_explained`` also returns the engine's
decision, whose ``explain`` dict is what the usage record and the debug header carry.

The attempt loop with health, breakers and Retry-After rules is
``routing.failover.run_with_failover`` (docs/failover.md); the gateway's pipeline calls the
adapters itself today, so adopting it there is the gateway's change.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.pipeline import CallContext, Candidate, RoutePlan
from gateway.providers.types import ChatRequest, EmbeddingRequest
from gateway.tasks import endpoint_for
from routing.catalog import acatalog_snapshot
from routing.complexity import RequestFeatures
from routing.engine import NoRoute, RouteDecision, RouteRequest, route
from routing.policies import RequestOverride, apolicy_for_key


def _features(request: ChatRequest | EmbeddingRequest) -> RequestFeatures:
    if isinstance(request, EmbeddingRequest):
        texts = [item for item in request.input if isinstance(item, str)]
        return RequestFeatures.from_messages([{"role": "user", "content": " ".join(texts)}])
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        content: Any = message.content
        if isinstance(content, list):
            content = [
                {"type": "text", "text": part.text or ""}
                if part.type == "text"
                else {"type": "image_url", "image_url": {"url": part.image_url or ""}}
                for part in content
            ]
        messages.append({"role": message.role, "content": content or ""})
    fmt = request.response_format.type if request.response_format else None
    return RequestFeatures.from_messages(
        messages, tools=bool(request.tools), response_format=fmt, max_tokens=request.max_tokens
    )


def _override(ctx: CallContext) -> RequestOverride | None:
    o = ctx.override
    if o is None:
        return None
    return RequestOverride(
        strategy=o.strategy,
        allowed_models=o.allowed_models,
        fallbacks=o.fallbacks,
        max_cost_usd=o.max_cost_usd,
        max_latency_ms=o.max_latency_ms,
        region=o.region,
        reference_model=o.reference_model,
    )


def _error(error: NoRoute) -> Exception:
    if error.code == "model_not_found":
        return NotFound(error.message, param="model", code="model_not_found")
    if error.code == "model_not_allowed":
        return PermissionDenied(error.message, param="model")
    return InvalidRequest(error.message, param="model", code=error.code)


async def route_engine_explained(
    *, ctx: CallContext, request: ChatRequest | EmbeddingRequest
) -> tuple[RoutePlan, RouteDecision]:
    snapshot = await acatalog_snapshot()
    policy = await apolicy_for_key(ctx.key, _override(ctx))
    route_request = RouteRequest(
        features=_features(request),
        model=ctx.requested_model,
        max_output_tokens=request.max_tokens if isinstance(request, ChatRequest) else None,
        stream=ctx.stream,
        mode="embedding" if ctx.route == "embeddings" else "chat",
    )
    try:
        decision = route(request=route_request, policy=policy, snapshot=snapshot)
    except NoRoute as error:
        raise _error(error) from None
    candidates = []
    for c in decision.candidates:
        price = c.model.current_price
        candidates.append(
            Candidate(
                model_id=c.model_id,
                provider=c.provider,
                deployment=c.deployment,
                endpoint=endpoint_for(snapshot, c.info),
                input_per_token=c.input_per_token,
                output_per_token=c.output_per_token,
                cached_input_per_token=price.cached_input_per_token if price else None,
                cache_write_per_token=price.cache_write_per_token if price else None,
            )
        )
    return RoutePlan(strategy=decision.strategy, candidates=candidates), decision


async def route_engine(*, ctx: CallContext, request: ChatRequest | EmbeddingRequest) -> RoutePlan:
    plan, _ = await route_engine_explained(ctx=ctx, request=request)
    return plan
