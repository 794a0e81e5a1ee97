"""The routing engine as the pipeline's ``route`` step (installed by ``GatewayConfig.ready``).

``gateway.engine_route.route_engine_explained`` (the routing-engine branch) turns the call
into the engine's request, resolves the effective policy (organization / department / team /
project / key, nearest wins, then the request's ``megarouter`` override), applies the hard
filters and scores the eligible models; this step keeps its explanation on the call context
(for the usage record and the debug header) and the reference model savings are measured
against (``routing.engine.reference_model_for``), and gives each candidate what the failover loop
needs: the deployment id (health and breaker key) and the model's context window.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.pipeline import CallContext, RoutePlan
from gateway.providers.types import ChatRequest, EmbeddingRequest


async def route(*, ctx: CallContext, request: ChatRequest | EmbeddingRequest) -> RoutePlan:
    from gateway.engine_route import route_engine_explained

    try:
        plan, decision = await route_engine_explained(ctx=ctx, request=request)
    except (InvalidRequest, NotFound) as engine_error:
        # The engine says "no deployment fits"; the interim router's checks name the exact
        # parameter and capability (docs/api.md: ``param`` names the field). Error path only.
        from gateway.routing_interim import route_interim

        try:
            await route_interim(ctx=ctx, request=request)
        except GatewayError as precise:
            raise precise from None
        raise engine_error from None
    plan.candidates = [
        dataclasses.replace(
            candidate,
            deployment_id=routed.info.id,
            context_window=routed.model.context_window,
        )
        for candidate, routed in zip(plan.candidates, decision.candidates, strict=True)
    ]
    ctx.route_explain = _bounded(decision.explain)
    ctx.reference_model = decision.reference_model
    return plan


def _bounded(explain: dict[str, Any]) -> dict[str, Any]:
    """The explanation as stored and sent: at most 10 candidates listed."""
    out = dict(explain)
    candidates = out.get("candidates")
    if isinstance(candidates, list) and len(candidates) > 10:
        out["candidates"] = candidates[:10]
        out["candidates_omitted"] = len(candidates) - 10
    return out


def install() -> None:
    from gateway import pipeline

    pipeline.STEPS.route = route
