"""The routing service: (request, effective policy, live health) -> the ordered deployments to
try, with the decision's explanation, or the precise error when nothing may serve it.

The gateway calls :func:`route_call` once per request; ``manage.py routing_eval`` and the
console's preview call :func:`route` with a policy of their own. Steps (docs/routing.md):

1. the effective policy: organization / department / team / project / key / request, nearest
   wins for preferences, restrictions accumulate (``routing.policies``);
2. a named model is resolved and checked (policy, mode, capabilities, streaming, context
   window, quality floor, price cap, worst-case cost, deployments), each failure its own error
   naming the parameter; ``auto`` / ``auto:<strategy>`` filters every model the same way
   (``routing.eligibility``), leaving out deprecated ones, and ranks what is left
   (``routing.strategies``) with the complexity estimate;
3. the policy's preferred models go first, its fallbacks are appended, and if the first
   models are all on one provider, the best model of another provider is appended;
4. deployments within a model by breaker state, priority, weight; breakers open and still
   cooling down last (the failover loop skips them without a call); one whose cool-down is
   over keeps its place, so live traffic makes its half-open trial.

Pure Python over the in-process catalog snapshot and health view: no database work and no
network I/O when warm.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings

from routing.catalog import (
    AmbiguousModel,
    CatalogSnapshot,
    DeploymentInfo,
    ModelInfo,
    PriceVersion,
    UnknownModel,
    acatalog_snapshot,
    catalog_snapshot,
)
from routing.complexity import Estimate, Needs, RequestFeatures, estimate
from routing.complexity.estimator import guess_output_tokens
from routing.eligibility import (
    CAP_JSON_SCHEMA,
    CAP_TOOLS,
    CAP_VISION,
    CAPABILITIES,
    Entry,
    Filter,
    Item,
    capability_gaps,
    dimensions_ok,
    dynamic,
    eligible,
    indexes,
    indexes_reset,
    mode_ok,
)
from routing.health import HealthStore, health_store
from routing.policies import STRATEGIES, EffectivePolicy, PolicySpec, apolicy_for_key, matches
from routing.stickiness import CacheHolder, recall
from routing.strategies import (
    DEFAULT_COST_QUALITY,
    LIVE,
    RANKERS,
    Trade,
    health_penalty,
    order_deployments,
    stay_or_switch,
    why_deployment,
)

AUTO = "auto"
MAX_MODELS = 3  # models whose deployments become candidates (plus fallbacks, diversity)
MAX_CANDIDATES = 8
RANK_TTL = 0.25  # seconds a live-stats ranking (latency, availability) is reused
EXPLAIN_CANDIDATES = 10  # candidates listed in the explanation (stored and sent)
CENTS = Decimal("0.00000001")

# NoRoute codes and the HTTP status they answer with (everything else is a 400).
STATUS = {"model_not_found": 404, "model_not_allowed": 403}


class NoRoute(Exception):
    """Nothing may serve the request. ``code`` (model_not_found, model_not_allowed,
    ambiguous_model, model_not_supported, unsupported_parameter, context_length_exceeded,
    max_cost_exceeded, no_eligible_model), ``message`` (names models and parameters, never
    content), ``param`` (the request parameter to blame), ``explain`` (what was filtered)."""

    def __init__(
        self,
        code: str,
        message: str,
        explain: dict[str, Any] | None = None,
        *,
        param: str | None = "model",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.explain = explain or {}

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the engine sees of a request: features (never stored), the requested model
    (``auto``, ``auto:<strategy>`` or a model name), the output ceiling, the capabilities it
    needs (and which parameter asked for each) and the prompt's token estimate."""

    features: RequestFeatures
    model: str = AUTO
    max_output_tokens: int | None = None
    stream: bool = False
    mode: str = "chat"  # chat | embedding
    needs: frozenset[str] | None = None  # None: read from the features
    needs_param: Mapping[str, str] = field(default_factory=dict)
    input_tokens: int | None = None  # None: the features' estimate
    dimensions: int | None = None  # embeddings: the vector size asked for
    # a continuing conversation's identity (routing.stickiness.conversation_key), and where
    # its prompt cache is (route_call reads it for auto requests)
    conversation: str | None = None
    cache: CacheHolder | None = None

    @property
    def auto(self) -> bool:
        return self.model == AUTO or self.model.startswith(AUTO + ":")

    def capability_needs(self) -> frozenset[str]:
        if self.needs is not None:
            return self.needs
        f = self.features
        wanted = ((CAP_TOOLS, f.has_tools), (CAP_VISION, f.has_images))
        schema = f.response_format == "json_schema"
        return frozenset(cap for cap, yes in (*wanted, (CAP_JSON_SCHEMA, schema)) if yes)

    def prompt_tokens(self) -> int:
        return self.input_tokens if self.input_tokens is not None else self.features.input_tokens


@dataclass(frozen=True, slots=True)
class RouteCandidate:
    """One deployment to try: what the failover loop keys health on, what the adapter call is
    built from (``info``), and the model's price in force (worst case, explanation)."""

    deployment_id: int
    deployment: str
    model_id: str
    provider: str
    context_window: int | None
    info: DeploymentInfo
    model: ModelInfo
    price: PriceVersion | None

    @property
    def timeouts(self) -> dict[str, float]:
        """Per-attempt deadlines set for this model or deployment (operator file)."""
        return dict(self.info.timeouts)

    @property
    def rpm_limit(self) -> int | None:
        return self.info.rpm_limit

    @property
    def tpm_limit(self) -> int | None:
        return self.info.tpm_limit

    @property
    def input_per_token(self) -> Decimal:
        return self.price.input_per_token if self.price else Decimal(0)

    @property
    def output_per_token(self) -> Decimal:
        return self.price.output_per_token if self.price else Decimal(0)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    strategy: str  # "fixed" for a named model
    candidates: tuple[RouteCandidate, ...]
    estimate: Estimate | None
    explain: dict[str, Any]
    # The canonical id this request's savings are measured against (see reference_model_for).
    reference_model: str = ""
    policy: EffectivePolicy = field(default_factory=EffectivePolicy, compare=False)
    # The catalog snapshot the decision was made on: the attempts build their endpoints from
    # it and settle prices from it (the same catalog, read once per request).
    snapshot: CatalogSnapshot | None = field(default=None, compare=False, repr=False)


async def route_call(
    *,
    key: Any,
    request: RouteRequest,
    override: PolicySpec | None = None,
    store: HealthStore | None = None,
) -> RouteDecision:
    """The gateway's call: the catalog snapshot and the policy table from their in-process
    caches (no thread hop and no database work while fresh), then :func:`route`. ``key`` is
    an orgs ``KeyContext``, ``override`` the request's ``megarouter`` policy."""
    snapshot = await acatalog_snapshot()
    policy = await apolicy_for_key(key, override)
    if request.auto and request.conversation is not None and request.cache is None:
        holder = await recall(request.conversation)
        if holder is not None:
            request = dataclasses.replace(request, cache=holder)
    return route(request=request, policy=policy, snapshot=snapshot, store=store, override=override)


def route(
    *,
    request: RouteRequest,
    policy: EffectivePolicy,
    snapshot: CatalogSnapshot | None = None,
    store: HealthStore | None = None,
    estimate_: Estimate | None = None,
    override: PolicySpec | None = None,
) -> RouteDecision:
    """Route one request (see the module docstring). Raises NoRoute when nothing fits."""
    snapshot = snapshot or catalog_snapshot()
    store = store or health_store()
    flt = Filter(
        policy=policy,
        store=store,
        needs=request.capability_needs(),
        input_tokens=request.prompt_tokens(),
        max_output=request.max_output_tokens,
        stream=request.stream,
        mode=request.mode,
        dimensions=request.dimensions,
    )
    reference, note = reference_model_for(policy, snapshot)
    cache = None
    if request.auto:
        strategy, est, chosen, reason, cache = _auto(
            request, policy, snapshot, store, flt, estimate_, reference
        )
    else:
        model = _resolve(snapshot, request.model, "model")
        strategy, est, reason = "fixed", None, "requested model"
        chosen = [_check_named(model, snapshot, request, flt, param="model")]
    seen = {entry.model.canonical_id for entry, _ in chosen}
    chosen += _fallbacks(snapshot, request, flt, override, seen)
    # a named model's deployments are spread under the policy's strategy too
    spread = policy.strategy if strategy == "fixed" else strategy
    candidates = _candidates(strategy, chosen, store, request.stream, spread)
    explain = _explain(strategy, reason, request, est, flt, candidates, snapshot)
    if cache is not None:
        explain["prompt_cache"] = cache
    if candidates:
        first = candidates[0]
        if est is not None and request.mode != "embedding":
            explain["quality"] = est.evidence_for(first.model_id, first.model.quality_tier)
        peers = next((ds for entry, ds in chosen if entry.model.canonical_id == first.model_id), ())
        explain["deployment"] = {
            "picked": first.deployment,
            "why": why_deployment(store, peers, first.info, spread),
        }
    _explain_reference(explain, _tokens(request, est), snapshot, reference, note)
    return RouteDecision(
        strategy=strategy,
        candidates=tuple(candidates),
        estimate=est,
        explain=explain,
        reference_model=reference,
        policy=policy,
        snapshot=snapshot,
    )


def engine_cache_reset() -> None:
    """Forget cached eligibility and rankings (tests; they also reset on a new snapshot)."""
    indexes_reset()


def route_timed(**kwargs: Any) -> tuple[RouteDecision, float]:
    """``route`` and its duration in seconds (benchmarks)."""
    start = time.perf_counter()
    decision = route(**kwargs)
    return decision, time.perf_counter() - start


# ---------------------------------------------------------------- a named model


def _resolve(snapshot: CatalogSnapshot, name: str, param: str) -> ModelInfo:
    shown = name[:100]
    try:
        return snapshot.resolve(name)
    except AmbiguousModel as error:
        raise NoRoute(
            "ambiguous_model",
            f"The model name '{shown}' is ambiguous; use one of: {', '.join(error.candidates)}.",
            param=param,
        ) from None
    except UnknownModel:
        raise NoRoute(
            "model_not_found", f"The model '{shown}' does not exist.", param=param
        ) from None


def _check_named(
    model: ModelInfo, snapshot: CatalogSnapshot, request: RouteRequest, flt: Filter, *, param: str
) -> Item:
    """A model the caller named (or a fallback the request names): every filter in turn, the
    first that fails raising its own error. Returns the model with its usable deployments."""
    canonical = model.canonical_id
    if not flt.policy.model_allowed(canonical):
        raise _not_allowed(flt.policy, canonical, param)
    _check_capabilities(model, request, flt, param)
    entry = indexes(snapshot).by_id.get(canonical)
    if entry is None:
        raise NoRoute(
            "model_not_found", f"The model '{canonical}' has no enabled deployment.", param=param
        )
    reason = flt.model_reason(entry)
    if reason is not None:
        flt.no(reason)
        raise _outside_policy(entry, reason, flt, param)
    worst = flt.worst_case(entry)
    cap = flt.policy.max_cost_per_request_usd
    if cap is not None and worst is not None and worst > cap:
        raise NoRoute(
            "max_cost_exceeded",
            f"The worst-case cost of this request at '{canonical}' (${worst:.6f}) is above "
            f"the routing policy's max_cost_per_request_usd (${cap.normalize():f}).",
            param=_request_param(flt.policy, "max_cost_per_request_usd"),
        )
    deployments = flt.deployments(entry)
    if not deployments:
        raise NoRoute(
            "no_eligible_model",
            f"No deployment of '{canonical}' fits the routing policy "
            f"({', '.join(sorted(flt.rejected)) or 'none enabled'}).",
            {"rejected": dict(flt.rejected), "policy": flt.policy.summary()},
            param=param,
        )
    return entry, deployments


def _check_capabilities(model: ModelInfo, request: RouteRequest, flt: Filter, param: str) -> None:
    canonical = model.canonical_id
    if not mode_ok(model, flt.mode):
        expected = "an embedding model" if flt.mode == "embedding" else "a chat model"
        raise NoRoute(
            "model_not_supported",
            f"The model '{canonical}' is not {expected} (mode: {model.mode}).",
            param=param,
        )
    gaps = capability_gaps(model, flt.needs)
    if gaps:
        raise NoRoute(
            "unsupported_parameter",
            f"The model '{canonical}' does not support {CAPABILITIES[gaps[0]][1]}.",
            param=request.needs_param.get(gaps[0], param),
        )
    if flt.stream and not model.supports_streaming:
        raise NoRoute(
            "unsupported_parameter",
            f"The model '{canonical}' does not support streaming.",
            param="stream",
        )
    if not dimensions_ok(model, flt.dimensions):
        raise NoRoute(
            "invalid_request",
            f"'dimensions' must be at most {model.output_vector_size} for the model "
            f"'{canonical}'; got {flt.dimensions}.",
            param="dimensions",
        )


def _not_allowed(policy: EffectivePolicy, canonical: str, param: str) -> NoRoute:
    level = policy.denied_by(canonical)
    if level == "request":
        return NoRoute(
            "invalid_request",
            f"The model '{canonical}' is not in 'megarouter.allowed_models'.",
            param="megarouter.allowed_models",
        )
    where = "" if level == "key" else f" (the {level} routing policy does not allow it)"
    return NoRoute(
        "model_not_allowed",
        f"This API key may not use the model '{canonical}'{where}.",
        param=param,
    )


def _outside_policy(entry: Entry, reason: str, flt: Filter, param: str) -> NoRoute:
    m, policy = entry.model, flt.policy
    if reason == "context_window":
        return NoRoute(
            "context_length_exceeded",
            f"The request needs about {flt.input_tokens + (flt.max_output or 0)} tokens (prompt "
            f"and max_tokens) and '{m.canonical_id}' has a context window of {m.context_window}.",
            param="messages",
        )
    why = {
        "quality_floor": f"its quality tier {m.quality_tier} is below the routing policy's "
        f"quality_floor {policy.quality_floor}",
        "price_cap": "its price is above the routing policy's max_price_per_million "
        f"(${policy.max_price_per_million})",
    }.get(reason, reason)
    return NoRoute(
        "no_eligible_model",
        f"The model '{m.canonical_id}' cannot serve this request: {why}.",
        param=param,
    )


def _request_param(policy: EffectivePolicy, name: str) -> str | None:
    """The request parameter to blame for a cap: ``megarouter.<name>`` when the request set
    it, else nothing (a policy level set it)."""
    return f"megarouter.{name}" if policy.set_by(name) == "request" else None


# ---------------------------------------------------------------- auto


def _auto(
    request: RouteRequest,
    policy: EffectivePolicy,
    snapshot: CatalogSnapshot,
    store: HealthStore,
    flt: Filter,
    est: Estimate | None,
    reference: str,
) -> tuple[str, Estimate, list[Item], str, dict[str, Any] | None]:
    strategy = request.model.partition(":")[2] or policy.strategy
    if strategy not in STRATEGIES:
        raise NoRoute("model_not_found", f"Unknown routing strategy '{strategy[:40]}'.")
    if est is None:
        est = _estimate(request)
    if request.mode == "embedding" and strategy == "balanced":
        strategy = "cost"  # embeddings have no answer quality to trade against price
    today = datetime.now(UTC).date()  # a model past its deprecation date leaves the pool
    key, found = eligible(snapshot, flt, today, frozenset(est.model_success))
    flt.rejected = dict(found.rejected)
    live = strategy in LIVE
    pool = dynamic(found.items if live else found.pruned, flt)
    if not pool:
        raise NoRoute(
            "no_eligible_model",
            f"No model this key may use fits the request for '{request.model}' "
            f"({', '.join(sorted(flt.rejected)) or 'no deployments'}).",
            {
                "strategy": strategy,
                "considered": len(snapshot.deployments),
                "rejected": flt.rejected,
            },
        )
    trade = _trade(policy, snapshot, reference, est)
    ordered, reason = _ranked(
        strategy, key, pool, found.items, est, store, request.stream, snapshot, trade
    )
    if policy.preferred_models:
        preferred = policy.preferred_models
        ordered.sort(key=lambda item: not matches(preferred, item[0].model.canonical_id))
    cache = None
    if request.cache is not None:
        ordered, cache = stay_or_switch(ordered, request.cache, est)
    return strategy, est, _diverse(ordered), reason, cache


def _trade(
    policy: EffectivePolicy, snapshot: CatalogSnapshot, reference: str, est: Estimate
) -> Trade:
    """Balanced's willingness (the policy's ``cost_quality``) and its cost unit: the reference
    model's list-price cost of this request's estimated tokens (None when it has no price)."""
    willingness = (
        float(policy.cost_quality) if policy.cost_quality is not None else DEFAULT_COST_QUALITY
    )
    try:
        price = snapshot.resolve(reference).current_price
    except LookupError:
        price = None
    cost = None
    if price is not None:
        cost = (
            float(price.input_per_token) * est.input_tokens
            + float(price.output_per_token) * est.output_tokens
        )
    return Trade(willingness, cost, reference)


def _estimate(request: RouteRequest) -> Estimate:
    if request.mode != "embedding":
        return estimate(request.features)
    tokens = request.prompt_tokens()
    return Estimate(
        difficulty=0.0,
        tier=1,
        needs=Needs(),
        language=request.features.language,
        tier_success=(1.0, 1.0, 1.0, 1.0),
        model_success={},
        input_tokens=tokens,
        output_tokens=0,
        shared_logit=0.0,
        shared_median=0.0,
    )


def _ranked(
    strategy: str,
    key: tuple[Any, ...],
    pool: tuple[Item, ...],
    everything: tuple[Item, ...],
    est: Estimate,
    store: HealthStore,
    stream: bool,
    snapshot: CatalogSnapshot,
    trade: Trade,
) -> tuple[list[Item], str]:
    """The strategy's ranking; a live-stats ranking of the unfiltered pool is reused for
    RANK_TTL seconds per estimated tier (those strategies rank the models of at least the tier
    first, and do not read ``trade``)."""
    cacheable = strategy in LIVE and pool is everything
    ranks = indexes(snapshot).ranks
    now = time.monotonic()
    cached = ranks.get((key, strategy, est.tier)) if cacheable else None
    if cached is not None and now - cached[0] < RANK_TTL:
        return list(cached[1]), cached[2]
    ordered, reason = RANKERS[strategy](list(pool), est, store, stream, trade)
    if cacheable:
        ranks[(key, strategy, est.tier)] = (now, list(ordered), reason)
    return ordered, reason


def _diverse(ordered: list[Item]) -> list[Item]:
    """The first MAX_MODELS models, plus the best one of another provider when they are all
    on one."""
    chosen = list(ordered[:MAX_MODELS])
    providers = {d.provider for _, ds in chosen for d in ds}
    if len(providers) == 1:
        other = next(
            (
                item
                for item in ordered[MAX_MODELS:]
                if any(d.provider not in providers for d in item[1])
            ),
            None,
        )
        if other is not None:
            chosen.append(other)
    return chosen


# ---------------------------------------------------------------- fallbacks and candidates


def _fallbacks(
    snapshot: CatalogSnapshot,
    request: RouteRequest,
    flt: Filter,
    override: PolicySpec | None,
    seen: set[str],
) -> list[Item]:
    """The policy's fallbacks (nearest level wins), after the routed models. The request's own
    are checked like a named model, each failure naming ``megarouter.fallbacks[i]``; a policy
    level's are skipped quietly when they cannot serve (counted in the explanation)."""
    out: list[Item] = []
    precise = override is not None and override.fallbacks is not None
    for index, name in enumerate(flt.policy.fallbacks):
        if precise:
            param = f"megarouter.fallbacks[{index}]"
            model = _resolve(snapshot, name, param)
            if model.canonical_id not in seen:
                out.append(_check_named(model, snapshot, request, flt, param=param))
                seen.add(model.canonical_id)
            continue
        item = _quiet_fallback(snapshot, name, flt, seen)
        if item is not None:
            out.append(item)
            seen.add(item[0].model.canonical_id)
    return out


def _quiet_fallback(
    snapshot: CatalogSnapshot, name: str, flt: Filter, seen: set[str]
) -> Item | None:
    try:
        model = snapshot.resolve(name)
    except LookupError:
        flt.no("fallback_unknown")
        return None
    entry = indexes(snapshot).by_id.get(model.canonical_id)
    if entry is None or model.canonical_id in seen:
        return None
    if not flt.model_ok(entry) or not flt.cost_ok(entry):
        return None
    deployments = flt.deployments(entry)
    return (entry, deployments) if deployments else None


def _candidates(
    strategy: str, chosen: list[Item], store: HealthStore, stream: bool, spread: str
) -> list[RouteCandidate]:
    """Deployments in the order to try them (within a model spread by weight, or least
    loaded under ``spread`` latency: ``order_deployments``); breakers cooling down last."""
    candidates: list[RouteCandidate] = []

    def ordered(ds: tuple[DeploymentInfo, ...]) -> list[DeploymentInfo]:
        return order_deployments(store, ds, strategy=spread, stream=stream)

    if strategy == "availability":
        # interleave providers: the best deployment, then the best on another provider, ...
        pool = [(entry, d) for entry, ds in chosen for d in ordered(ds)]
        last_provider = None
        while pool and len(candidates) < MAX_CANDIDATES:
            pick = next((p for p in pool if p[1].provider != last_provider), pool[0])
            pool.remove(pick)
            candidates.append(_candidate(*pick))
            last_provider = pick[1].provider
    else:
        for entry, ds in chosen:
            candidates += [_candidate(entry, d) for d in ordered(ds)]
        if strategy != "fixed":
            candidates = candidates[:MAX_CANDIDATES]
    open_last = sorted(
        range(len(candidates)), key=lambda i: (health_penalty(store, candidates[i].info)[0], i)
    )
    return [candidates[i] for i in open_last]


def _candidate(entry: Entry, d: DeploymentInfo) -> RouteCandidate:
    return RouteCandidate(
        deployment_id=d.id,
        deployment=d.name,
        model_id=entry.model.canonical_id,
        provider=d.provider,
        context_window=entry.model.context_window,
        info=d,
        model=entry.model,
        price=entry.price,
    )


# ---------------------------------------------------------------- savings reference


def reference_model_for(
    policy: EffectivePolicy, snapshot: CatalogSnapshot
) -> tuple[str, str | None]:
    """(canonical id, note): the effective policy's ``reference_model`` (nearest level wins,
    the request's override included) resolved in the catalog, else the default
    ``MEGAROUTER_DEFAULT_REFERENCE_MODEL``. A policy model the catalog does not know (policies
    are not checked against the catalog, and a model can leave it) falls back to the default;
    the note says so, for the explanation."""
    default = str(settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL)
    note = None
    if policy.reference_model:
        try:
            return snapshot.resolve(policy.reference_model).canonical_id, None
        except LookupError as error:  # UnknownModel, AmbiguousModel
            note = f"{error}; savings are measured against the default {default!r}"
    try:
        return snapshot.resolve(default).canonical_id, note
    except LookupError:
        return default, note  # no price known: the reference cost is the actual cost


# ---------------------------------------------------------------- the explanation


@dataclass(frozen=True, slots=True)
class _Tokens:
    """Token counts for the explanation's cost figures when no estimate was made."""

    input_tokens: int
    output_tokens: int


def _tokens(request: RouteRequest, est: Estimate | None) -> Estimate | _Tokens | None:
    if est is not None:
        return est
    if request.mode == "embedding":
        return None
    return _Tokens(request.prompt_tokens(), guess_output_tokens(request.features))


def _explain(
    strategy: str,
    reason: str,
    request: RouteRequest,
    est: Estimate | None,
    flt: Filter,
    candidates: list[RouteCandidate],
    snapshot: CatalogSnapshot,
) -> dict[str, Any]:
    """Metadata only (no prompt text): small enough for a usage record and a header."""
    listed = [
        {"model": c.model_id, "deployment": c.deployment, "provider": c.provider}
        for c in candidates
    ]
    out: dict[str, Any] = {
        "strategy": strategy,
        "reason": reason,
        "considered": len(snapshot.deployments) if request.auto else 1,
        "rejected": dict(flt.rejected),
        "candidates": listed[:EXPLAIN_CANDIDATES],
        "policy": flt.policy.summary(),
    }
    if len(listed) > EXPLAIN_CANDIDATES:
        out["candidates_omitted"] = len(listed) - EXPLAIN_CANDIDATES
    if est is not None and request.mode != "embedding":
        out["tier"] = est.tier
        out["difficulty"] = round(est.difficulty, 3)
        f = request.features
        if f.turns > 1 or f.tool_results or f.tool_calls:
            out["conversation"] = {
                "user_turns": f.turns,
                "tool_calls": f.tool_calls,
                "tool_results": f.tool_results,
                "earlier_turns_read": f.earlier is not None,
            }
    tokens = _tokens(request, est)
    if tokens is not None and candidates:
        chosen = candidates[0]
        cost = (
            chosen.input_per_token * tokens.input_tokens
            + chosen.output_per_token * tokens.output_tokens
        )
        out["estimated_cost_usd"] = str(cost.quantize(CENTS))
    return out


def _explain_reference(
    out: dict[str, Any],
    tokens: Estimate | _Tokens | None,
    snapshot: CatalogSnapshot,
    reference: str,
    note: str | None,
) -> None:
    """The reference model savings are measured against and, with token counts, its
    list-price cost of them (the saving the route is expected to make)."""
    out["reference_model"] = reference
    if note:
        out["reference_model_note"] = note
    if tokens is None:
        return
    try:
        price = snapshot.resolve(reference).current_price
    except LookupError:
        price = None
    if price is not None:
        ref_cost = (
            price.input_per_token * tokens.input_tokens
            + price.output_per_token * tokens.output_tokens
        )
        out["reference_cost_usd"] = str(ref_cost.quantize(CENTS))


# ---------------------------------------------------------------- the models a key may call


async def models_for_key(key: Any) -> list[ModelInfo]:
    """``GET /v1/models``: every model with an enabled deployment that the key's effective
    policy allows (organization to key), by canonical id."""
    snapshot = await acatalog_snapshot()
    policy = await apolicy_for_key(key)
    return [
        snapshot.models[model_id]
        for model_id in sorted(snapshot.deployments)
        if policy.model_allowed(model_id)
    ]


async def model_for_key(key: Any, name: str) -> ModelInfo:
    """``GET /v1/models/{id}``: one of them, else the NoRoute a call to it would get."""
    snapshot = await acatalog_snapshot()
    policy = await apolicy_for_key(key)
    model = _resolve(snapshot, name, "model")
    if not snapshot.deployments.get(model.canonical_id):
        raise NoRoute(
            "model_not_found", f"The model '{model.canonical_id}' has no enabled deployment."
        )
    if not policy.model_allowed(model.canonical_id):
        raise _not_allowed(policy, model.canonical_id, "model")
    return model
