"""Interim routing: turns the requested model into an ordered list of deployments until the
routing-engine branch lands (it replaces ``pipeline.STEPS.route``; see docs/api.md).

A named model (catalog id ``openai/gpt-5`` or unambiguous bare name ``gpt-5``) resolves to its
enabled deployments in priority order (lower first, then higher weight); its other deployments
are the fallbacks, then those of the per-request ``megarouter.fallbacks`` models. Strategy
``fixed``.

``auto`` / ``auto:<strategy>`` use the *interim static policy*: every chat model the key may
use that has a deployment, supports what the request needs (tools, vision, JSON schema,
reasoning) and fits ``max_cost_usd``, ordered by list price and quality tier only (no live
health or latency data yet):

- ``cost``: cheapest first.
- ``balanced`` (default): cheapest first among the models whose quality tier is at least the
  median of the eligible ones, then the rest by price.
- ``latency``: no latency statistics exist yet, so the same order as ``cost`` (smaller, cheaper
  models are usually the faster ones).
- ``availability``: models with the most deployments first, then by price.

The first three models' deployments become the candidates (the choice and its fallbacks).
The catalog snapshot is in-process, so this does no database work once it is warm.
"""

from __future__ import annotations

import fnmatch
import statistics
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gateway.auth import model_allowed
from gateway.errors import InvalidRequest, NotFound, PermissionDenied, UnsupportedParameter
from gateway.pipeline import CallContext, Candidate, RoutePlan
from gateway.providers.types import ChatRequest, EmbeddingRequest, Endpoint
from gateway.wire.common import (
    CAP_JSON_SCHEMA,
    CAP_REASONING,
    CAP_TOOLS,
    CAP_VISION,
    ROUTING_ALIASES,
)

AUTO_MODELS = 3  # how many models an auto route tries before giving up
DEFAULT_OUTPUT_ESTIMATE = 1024  # output tokens assumed for max_cost_usd when max_tokens is unset
ZERO = Decimal(0)

_CAPABILITY_FIELDS = {
    CAP_TOOLS: ("supports_tools", "tool calling"),
    CAP_VISION: ("supports_vision", "image input"),
    CAP_JSON_SCHEMA: ("supports_json_schema", "JSON schema output"),
    CAP_REASONING: ("supports_reasoning", "reasoning effort"),
}
_CHAT_MODES = ("chat", "responses", "completion")


async def _snapshot() -> Any:
    from routing.catalog import acatalog_snapshot

    return await acatalog_snapshot()


def _policy(ctx_key: Any) -> dict[str, Any]:
    policy = getattr(ctx_key, "routing_policy", None)
    return dict(policy) if policy else {}


def _key_allows(key: Any, model_id: str) -> bool:
    if not model_allowed(key, model_id):
        return False
    policy = _policy(key)
    blocked = policy.get("blocked_models") or ()
    if any(p == model_id or fnmatch.fnmatchcase(model_id, p) for p in blocked):
        return False
    allowed = policy.get("allowed_models")
    return not allowed or any(p == model_id or fnmatch.fnmatchcase(model_id, p) for p in allowed)


def _resolve(snapshot: Any, name: str, param: str = "model") -> Any:
    from routing.catalog import AmbiguousModel, UnknownModel

    try:
        return snapshot.resolve(name)
    except AmbiguousModel as error:
        raise InvalidRequest(
            f"The model name '{_bounded(name)}' is ambiguous; use one of: "
            f"{', '.join(error.candidates)}.",
            param=param,
            code="ambiguous_model",
        ) from None
    except UnknownModel:
        raise NotFound(
            f"The model '{_bounded(name)}' does not exist.", param=param, code="model_not_found"
        ) from None


def _bounded(name: str) -> str:
    return name[:100]


def _price(model: Any) -> Any:
    return model.current_price


def _unit_price(model: Any) -> Decimal:
    price = _price(model)
    if price is None:
        return ZERO
    return price.input_per_token + price.output_per_token


def _prompt_tokens_estimate(request: ChatRequest | EmbeddingRequest) -> int:
    if isinstance(request, ChatRequest):
        chars = sum(len(message.text()) for message in request.messages)
    else:
        chars = sum(len(item) if isinstance(item, str) else len(item) * 4 for item in request.input)
    return chars // 4 + 1


def worst_case_cost(model: Any, request: ChatRequest | EmbeddingRequest) -> Decimal:
    """List-price estimate of the request at ``model``: prompt (characters / 4) plus the
    output ceiling (max_tokens, else the model's max output, else 1024)."""
    price = _price(model)
    if price is None:
        return ZERO
    output = 0
    if isinstance(request, ChatRequest):
        output = request.max_tokens or model.max_output_tokens or DEFAULT_OUTPUT_ESTIMATE
    return (
        _prompt_tokens_estimate(request) * price.input_per_token + output * price.output_per_token
    )


def _capability_gaps(model: Any, needs: frozenset[str]) -> list[str]:
    return [
        cap
        for cap in sorted(needs)
        if cap in _CAPABILITY_FIELDS and not getattr(model, _CAPABILITY_FIELDS[cap][0])
    ]


def _mode_ok(model: Any, route: str) -> bool:
    if route == "embeddings":
        return model.mode == "embedding"
    return model.mode in _CHAT_MODES


def _candidates(snapshot: Any, model: Any, region: str | None) -> list[Candidate]:
    deployments = sorted(
        snapshot.deployments_for(model.canonical_id), key=lambda d: (d.priority, -d.weight, d.id)
    )
    if region:
        deployments = [d for d in deployments if d.region == region]
    price = _price(model)
    out = []
    for deployment in deployments:
        secret = (
            snapshot.credential_secret(deployment.credential_id)
            if deployment.credential_id
            else None
        )
        endpoint = Endpoint(
            kind=deployment.kind,
            base_url=deployment.base_url,
            model=deployment.provider_model_name,
            api_key=secret.api_key if secret else "",
            api_version=deployment.api_version,
            region=deployment.region,
            aws_access_key_id=secret.aws_access_key_id if secret else None,
            aws_secret_access_key=secret.aws_secret_access_key if secret else None,
            aws_session_token=secret.aws_session_token if secret else None,
            headers=tuple(deployment.headers),
            deployment_id=deployment.id,
        )
        out.append(
            Candidate(
                model_id=model.canonical_id,
                provider=deployment.provider,
                deployment=deployment.name,
                endpoint=endpoint,
                input_per_token=price.input_per_token if price else ZERO,
                output_per_token=price.output_per_token if price else ZERO,
                cached_input_per_token=price.cached_input_per_token if price else None,
                cache_write_per_token=price.cache_write_per_token if price else None,
            )
        )
    return out


async def route_interim(*, ctx: CallContext, request: ChatRequest | EmbeddingRequest) -> RoutePlan:
    snapshot = await _snapshot()
    override = ctx.override
    region = override.region if override else None
    if ctx.requested_model in ROUTING_ALIASES:
        return _route_auto(snapshot, ctx, request, region)
    model = _resolve(snapshot, ctx.requested_model)
    _check_fixed(model, ctx, request, "model")
    candidates = _candidates(snapshot, model, region)
    for index, name in enumerate(override.fallbacks or () if override else ()):
        param = f"megarouter.fallbacks[{index}]"
        fallback = _resolve(snapshot, name, param)
        if fallback.canonical_id == model.canonical_id:
            continue
        _check_fixed(fallback, ctx, request, param)
        candidates += _candidates(snapshot, fallback, region)
    return RoutePlan(strategy="fixed", candidates=candidates)


def _check_fixed(
    model: Any, ctx: CallContext, request: ChatRequest | EmbeddingRequest, param: str
) -> None:
    canonical = model.canonical_id
    if not _key_allows(ctx.key, canonical):
        raise PermissionDenied(f"This API key may not use the model '{canonical}'.", param=param)
    override = ctx.override
    if override and override.allowed_models and canonical not in override.allowed_models:
        raise InvalidRequest(
            f"The model '{canonical}' is not in 'megarouter.allowed_models'.",
            param="megarouter.allowed_models",
        )
    if not _mode_ok(model, ctx.route):
        expected = "an embedding model" if ctx.route == "embeddings" else "a chat model"
        raise InvalidRequest(
            f"The model '{canonical}' is not {expected} (mode: {model.mode}).",
            param=param,
            code="model_not_supported",
        )
    gaps = _capability_gaps(model, ctx.needs)
    if gaps:
        capability = gaps[0]
        raise UnsupportedParameter(
            f"The model '{canonical}' does not support {_CAPABILITY_FIELDS[capability][1]}.",
            param=ctx.needs_param.get(capability, param),
        )
    if ctx.stream and not model.supports_streaming:
        raise UnsupportedParameter(
            f"The model '{canonical}' does not support streaming.", param="stream"
        )
    if override and override.max_cost_usd is not None:
        estimate = worst_case_cost(model, request)
        if estimate > override.max_cost_usd:
            raise InvalidRequest(
                f"The worst-case cost of this request at '{canonical}' (${estimate:.6f}) is "
                f"above 'megarouter.max_cost_usd'.",
                param="megarouter.max_cost_usd",
                code="max_cost_exceeded",
            )


@dataclass(frozen=True, slots=True)
class _Pool:
    """The models an ``auto`` request of one key may land on, in each strategy's order."""

    by_price: tuple[Any, ...]  # cheapest first (cost, latency)
    balanced: tuple[Any, ...]  # tier >= the pool's median tier by price, then the rest
    availability: tuple[Any, ...]  # most deployments first, then by price


_POOLS: dict[tuple[Any, ...], _Pool] = {}
_POOLS_MAX = 4096


def _auto_pool(snapshot: Any, key: Any, route: str) -> _Pool:
    """Right mode, not retired, with a deployment, allowed by the key and its policy; built
    once per catalog snapshot and key permissions (the catalog holds thousands of models and
    scanning them costs about a millisecond), then reused."""
    policy = _policy(key)
    cache_key = (
        snapshot.token,
        route == "embeddings",
        tuple(getattr(key, "allowed_models", ()) or ()),
        tuple(policy.get("allowed_models") or ()),
        tuple(policy.get("blocked_models") or ()),
    )
    pool = _POOLS.get(cache_key)
    if pool is not None:
        return pool
    by_price = tuple(
        sorted(
            (
                model
                for model in snapshot.models.values()
                if _mode_ok(model, route)
                and model.status != "retired"
                and snapshot.deployments_for(model.canonical_id)
                and _key_allows(key, model.canonical_id)
            ),
            key=lambda m: (_unit_price(m), m.canonical_id),
        )
    )
    median = statistics.median_low([m.quality_tier for m in by_price]) if by_price else 0
    rank = {m.canonical_id: index for index, m in enumerate(by_price)}
    pool = _Pool(
        by_price=by_price,
        balanced=tuple(m for m in by_price if m.quality_tier >= median)
        + tuple(m for m in by_price if m.quality_tier < median),
        availability=tuple(
            sorted(
                by_price,
                key=lambda m: (
                    -len(snapshot.deployments_for(m.canonical_id)),
                    rank[m.canonical_id],
                ),
            )
        ),
    )
    if len(_POOLS) >= _POOLS_MAX:
        _POOLS.clear()
    _POOLS[cache_key] = pool
    return pool


def _route_auto(
    snapshot: Any, ctx: CallContext, request: ChatRequest | EmbeddingRequest, region: str | None
) -> RoutePlan:
    override = ctx.override
    alias_strategy = ctx.requested_model.partition(":")[2]
    strategy = (
        alias_strategy
        or (override.strategy if override else None)
        or _policy(ctx.key).get("strategy")
        or "balanced"
    )
    if ctx.route == "embeddings":
        raise InvalidRequest(
            "Routing aliases are for chat requests; name an embedding model.", param="model"
        )
    pool = _auto_pool(snapshot, ctx.key, ctx.route)
    order = {"balanced": pool.balanced, "availability": pool.availability}.get(
        strategy, pool.by_price
    )
    required = tuple(_CAPABILITY_FIELDS[cap][0] for cap in ctx.needs if cap in _CAPABILITY_FIELDS)
    allowed = override.allowed_models if override else None
    max_cost = override.max_cost_usd if override else None
    chosen = []
    for model in order:
        if allowed and model.canonical_id not in allowed:
            continue
        if required and not all(getattr(model, name) for name in required):
            continue
        if ctx.stream and not model.supports_streaming:
            continue
        if max_cost is not None and worst_case_cost(model, request) > max_cost:
            continue
        chosen.append(model)
        if len(chosen) == AUTO_MODELS:
            break
    if not chosen:
        raise InvalidRequest(
            f"No model this key may use fits the request for '{ctx.requested_model}' "
            "(capabilities, allowed models, max_cost_usd).",
            param="model",
            code="no_eligible_model",
        )
    candidates: list[Candidate] = []
    for model in chosen:
        candidates += _candidates(snapshot, model, region)
    return RoutePlan(strategy=strategy, candidates=candidates)


# ---------------------------------------------------------------- GET /v1/models


def _model_json(model_id: str, owner: str) -> dict[str, Any]:
    # The catalog keeps no release date; 0 says "unknown" in the integer the schema asks for.
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


async def models_for_key(key: Any) -> list[dict[str, Any]]:
    """Models this key may call (enabled deployments only), then the routing aliases."""
    snapshot = await _snapshot()
    data = [
        _model_json(model.canonical_id, model.provider)
        for model_id, model in sorted(snapshot.models.items())
        if snapshot.deployments_for(model_id) and _key_allows(key, model_id)
    ]
    data += [_model_json(alias, "megarouter") for alias in ROUTING_ALIASES]
    return data


async def model_for_key(key: Any, name: str) -> dict[str, Any]:
    if name in ROUTING_ALIASES:
        return _model_json(name, "megarouter")
    snapshot = await _snapshot()
    model = _resolve(snapshot, name)
    if not snapshot.deployments_for(model.canonical_id):
        raise NotFound(
            f"The model '{model.canonical_id}' has no deployment.",
            param="model",
            code="model_not_found",
        )
    if not _key_allows(key, model.canonical_id):
        raise PermissionDenied(
            f"This API key may not use the model '{model.canonical_id}'.", param="model"
        )
    return _model_json(model.canonical_id, model.provider)
