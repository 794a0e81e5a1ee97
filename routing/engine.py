"""The routing engine: (request, effective policy, live health) -> an ordered list of deployments.

    decision = route(request=RouteRequest(features=..., model="auto"), policy=policy)
    decision.candidates   # the choice first, then its fallbacks (across providers if possible)
    decision.explain      # a small dict: strategy, tier, difficulty, reason, what was considered

Steps (docs/routing.md, "Routing engine"):

1. Hard filters, per model then per deployment: the policy's allowed / blocked models and
   providers, mode, streaming, tools / vision / JSON-schema support, context window (prompt +
   max output must fit), quality floor, price cap (input and output price per million tokens),
   max cost per request (worst case), region / data residency, zero-data-retention providers,
   max latency (live EWMA, when known). ``auto`` leaves out models past their deprecation
   date (a named model, or a fallback the policy names, is still served).
2. Scoring by strategy, with the complexity estimate (``routing.complexity``):
   - ``balanced``: ``choose`` at willingness 0.5 (predicted quality against expected cost),
     minus penalties for live latency and error rate;
   - ``cost``: the cheapest expected cost among models of at least the estimated tier (and the
     quality floor); when none reaches the tier, the cheapest of the best tier available;
   - ``latency``: the fastest deployment now (EWMA time to first token for streams, total
     latency otherwise; a tier-based prior when a deployment has no samples yet), weighted by
     its error rate;
   - ``availability``: the most reliable deployments (lowest error rate, breaker closed, most
     samples), interleaved by provider so the backups are on other providers.
3. Deployments: within a model by breaker state, priority, weight. The policy's preferred
   models go first, its fallbacks are appended, and if the first models are all on one
   provider, the best model from another provider is appended. Open breakers go last (the
   failover loop skips them without a call).

A named model (not ``auto``) routes to that model's deployments, then the policy's fallback
models, all through the same hard filters. Pure Python over the in-process catalog snapshot
and health view: no database work and no network I/O when warm.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings

from routing.catalog import (
    AmbiguousModel,
    CatalogSnapshot,
    DeploymentInfo,
    ModelInfo,
    UnknownModel,
    catalog_snapshot,
)
from routing.complexity import TIER_PRIORS, Candidate, Estimate, RequestFeatures, choose, estimate
from routing.complexity.estimator import guess_output_tokens
from routing.health import CLOSED, HealthStore, health_store
from routing.policies import STRATEGIES, EffectivePolicy, matches

AUTO = "auto"
MAX_MODELS = 3  # models whose deployments become candidates (plus fallbacks, diversity)
MAX_CANDIDATES = 8
BALANCED_WILLINGNESS = 0.5
DEFAULT_OUTPUT_TOKENS = 1024  # worst-case output when neither the request nor the model says
LATENCY_PRIOR_MS = 400.0  # per quality tier, for a deployment without samples
MILLION = Decimal(1_000_000)
CHAT_MODES = ("chat", "responses", "completion")


class NoRoute(Exception):
    """No deployment fits. ``code``: model_not_found | ambiguous_model | model_not_allowed |
    no_eligible_model; ``explain`` says what was filtered and why."""

    def __init__(self, code: str, message: str, explain: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.explain = explain or {}


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the engine sees of a request: features (never stored), the requested model
    (``auto``, ``auto:<strategy>`` or a model name) and the output ceiling."""

    features: RequestFeatures
    model: str = AUTO
    max_output_tokens: int | None = None
    stream: bool = False
    mode: str = "chat"  # chat | embedding


@dataclass(frozen=True, slots=True)
class RouteCandidate:
    """One deployment to try. Field names match what ``routing.failover`` expects."""

    deployment_id: int
    deployment: str
    model_id: str
    provider: str
    context_window: int | None
    info: DeploymentInfo
    model: ModelInfo
    input_per_token: Decimal
    output_per_token: Decimal


@dataclass(frozen=True, slots=True)
class RouteDecision:
    strategy: str
    candidates: tuple[RouteCandidate, ...]
    estimate: Estimate | None
    explain: dict[str, Any]
    # The canonical id this request's savings are measured against (see reference_model_for).
    reference_model: str = ""


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


# ---------------------------------------------------------------- the per-snapshot index


@dataclass(frozen=True, slots=True)
class _Entry:
    model: ModelInfo
    deployments: tuple[DeploymentInfo, ...]
    price_in: Decimal
    price_out: Decimal
    price_in_f: float
    price_out_f: float
    priced: bool


Item = tuple[_Entry, tuple[DeploymentInfo, ...]]  # a model and its usable deployments

_index_cache: list[tuple[CatalogSnapshot, tuple[_Entry, ...]]] = []


def _index(snapshot: CatalogSnapshot) -> tuple[_Entry, ...]:
    """Models that have enabled deployments, with their current prices (built once per
    snapshot object: a rebuilt snapshot is a new object even when its token is the same)."""
    cached = _index_cache[0] if _index_cache else None
    if cached is not None and cached[0] is snapshot:
        return cached[1]
    out = []
    for model_id, deployments in snapshot.deployments.items():
        model = snapshot.models[model_id]
        if model.status == "retired":
            continue
        price = model.current_price
        pin = price.input_per_token if price else Decimal(0)
        pout = price.output_per_token if price else Decimal(0)
        out.append(
            _Entry(
                model=model,
                deployments=tuple(sorted(deployments, key=lambda d: (d.priority, -d.weight, d.id))),
                price_in=pin,
                price_out=pout,
                price_in_f=float(pin),
                price_out_f=float(pout),
                priced=price is not None,
            )
        )
    entries = tuple(sorted(out, key=lambda e: e.model.canonical_id))
    _index_cache[:] = [(snapshot, entries)]  # one snapshot at a time
    return entries


# ---------------------------------------------------------------- filters


class _Filter:
    """Hard filters for one request; counts what each one removed (for the explanation)."""

    __slots__ = (
        "cost_cap",
        "input_tokens",
        "max_output",
        "needs",
        "policy",
        "price_cap",
        "rejected",
        "request",
        "store",
    )

    def __init__(
        self,
        request: RouteRequest,
        policy: EffectivePolicy,
        est: Estimate | None,
        store: HealthStore,
    ) -> None:
        self.request = request
        self.policy = policy
        self.store = store
        features = request.features
        self.input_tokens = features.input_tokens
        self.max_output = request.max_output_tokens
        self.needs = (
            features.has_tools,
            features.has_images,
            features.response_format == "json_schema",
        )
        self.price_cap = (
            policy.max_price_per_million / MILLION
            if policy.max_price_per_million is not None
            else None
        )
        self.cost_cap = policy.max_cost_usd
        self.rejected: dict[str, int] = {}

    def _no(self, reason: str) -> bool:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return False

    def model_ok(self, entry: _Entry) -> bool:
        m = entry.model
        request = self.request
        if request.mode == "embedding":
            if m.mode != "embedding":
                return self._no("mode")
        elif m.mode not in CHAT_MODES:
            return self._no("mode")
        policy = self.policy
        if (policy.blocked_models or policy.allowed_model_groups) and not policy.model_allowed(
            m.canonical_id
        ):
            return self._no("policy_model")
        tools, vision, schema = self.needs
        if (
            (tools and not m.supports_tools)
            or (vision and not m.supports_vision)
            or (schema and not m.supports_json_schema)
        ):
            return self._no("capability")
        if request.stream and not m.supports_streaming:
            return self._no("streaming")
        if (
            m.context_window is not None
            and self.input_tokens + (self.max_output or 0) > m.context_window
        ):
            return self._no("context_window")
        if policy.quality_floor is not None and m.quality_tier < policy.quality_floor:
            return self._no("quality_floor")
        if self.price_cap is not None and (
            not entry.priced or entry.price_in > self.price_cap or entry.price_out > self.price_cap
        ):
            return self._no("price_cap")
        return True

    def cost_ok(self, entry: _Entry) -> bool:
        """Per request (depends on the prompt's size): the worst-case cost cap."""
        if self.cost_cap is None:
            return True
        m = entry.model
        output = self.max_output or m.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        worst = self.input_tokens * entry.price_in + output * entry.price_out
        if worst > self.cost_cap:
            return self._no("max_cost")
        return True

    def latency_ok(self, d: DeploymentInfo) -> bool:
        """Live: the deployment's EWMA latency (time to first token for streams) is known and
        above the policy's cap."""
        cap = self.policy.max_latency_ms
        if cap is None:
            return True
        stats = self.store.view(d.id)
        if stats is not None:
            seen = stats.ttft_ms if self.request.stream else stats.latency_ms
            if seen is not None and seen > cap:
                return self._no("max_latency")
        return True

    def deployment_ok(self, d: DeploymentInfo) -> bool:
        policy = self.policy
        if (
            policy.blocked_providers or policy.allowed_provider_groups
        ) and not policy.provider_allowed(d.provider):
            return self._no("policy_provider")
        if policy.region_groups and not policy.region_allowed(d.region):
            return self._no("region")
        if policy.zero_data_retention_only and not d.zero_data_retention:
            return self._no("zero_data_retention")
        return True


# ---------------------------------------------------------------- scoring helpers


def _latency_ms(store: HealthStore, d: DeploymentInfo, tier: int, stream: bool) -> float:
    stats = store.view(d.id)
    if stats is not None:
        seen = stats.ttft_ms if stream else stats.latency_ms
        if seen is not None:
            return seen
    return LATENCY_PRIOR_MS * tier


def _health_penalty(store: HealthStore, d: DeploymentInfo) -> tuple[int, float]:
    stats = store.view(d.id)
    if stats is None:
        return (0, 0.0)
    return (0 if stats.state == CLOSED else 1, stats.error_rate)


def _order_deployments(store: HealthStore, deployments: Sequence[DeploymentInfo]) -> list[Any]:
    if len(deployments) < 2:
        return list(deployments)
    return sorted(
        deployments, key=lambda d: (_health_penalty(store, d)[0], d.priority, -d.weight, d.id)
    )


def _candidate(entry: _Entry, d: DeploymentInfo) -> RouteCandidate:
    return RouteCandidate(
        deployment_id=d.id,
        deployment=d.name,
        model_id=entry.model.canonical_id,
        provider=d.provider,
        context_window=entry.model.context_window,
        info=d,
        model=entry.model,
        input_per_token=entry.price_in,
        output_per_token=entry.price_out,
    )


def _expected_cost(entry: _Entry, est: Estimate) -> float:
    return entry.price_in_f * est.input_tokens + entry.price_out_f * est.output_tokens


# ---------------------------------------------------------------- strategies


def _rank_models(
    strategy: str,
    eligible: list[Item],
    est: Estimate,
    store: HealthStore,
    stream: bool,
) -> tuple[list[Item], str]:
    """Models best first, and a one-line reason."""
    if strategy == "cost":
        best_tier = max(e.model.quality_tier for e, _ in eligible)
        tier = min(est.tier, best_tier)
        pool = [item for item in eligible if item[0].model.quality_tier >= tier]
        pool.sort(key=lambda item: (_expected_cost(item[0], est), -item[0].model.quality_tier))
        rest = [item for item in eligible if item[0].model.quality_tier < tier]
        rest.sort(key=lambda item: (-item[0].model.quality_tier, _expected_cost(item[0], est)))
        return pool + rest, f"cheapest expected cost at quality tier >= {tier}"
    if strategy == "latency":

        def speed(item: Item) -> float:
            entry, deployments = item
            return min(
                _latency_ms(store, d, entry.model.quality_tier, stream)
                * (1 + 4 * _health_penalty(store, d)[1])
                + 1e6 * _health_penalty(store, d)[0]
                for d in deployments
            )

        ranked = sorted(eligible, key=lambda item: (speed(item), _expected_cost(item[0], est)))
        return ranked, "fastest deployment now (live EWMA latency, error-weighted)"
    if strategy == "availability":

        def reliability(item: Item) -> tuple[float, ...]:
            entry, deployments = item
            best = min(
                (*_health_penalty(store, d), -min((store.view(d.id) or _NO_STATS).samples, 50))
                for d in deployments
            )
            return (*best, -len(deployments), _expected_cost(entry, est))

        ranked = sorted(eligible, key=reliability)
        return ranked, "most reliable deployments (error rate, breaker), backups on other providers"
    # balanced
    by_id = {item[0].model.canonical_id: item for item in eligible}
    ranked_c = choose(
        [
            Candidate(
                e.model.canonical_id,
                e.price_in_f,
                e.price_out_f,
                TIER_PRIORS[min(max(e.model.quality_tier, 1), len(TIER_PRIORS)) - 1],
            )
            for e, _ in eligible
        ],
        est,
        BALANCED_WILLINGNESS,
    )
    scored = []
    for r in ranked_c:
        item = by_id[r.candidate.model_id]
        entry, deployments = item
        fastest = min(_latency_ms(store, d, entry.model.quality_tier, stream) for d in deployments)
        error = min(_health_penalty(store, d)[1] for d in deployments)
        utility = r.utility - 0.05 * min(fastest / 10_000.0, 1.0) - 0.5 * error
        scored.append((-utility, r.expected_cost, entry.model.canonical_id, item))
    scored.sort(key=lambda t: t[:3])
    return [t[3] for t in scored], "predicted quality vs expected cost, live latency and errors"


class _NoStats:
    samples = 0


_NO_STATS = _NoStats()


# ---------------------------------------------------------------- the engine


def _resolve_model(snapshot: CatalogSnapshot, name: str) -> ModelInfo:
    try:
        return snapshot.resolve(name)
    except AmbiguousModel as error:
        raise NoRoute(
            "ambiguous_model",
            f"model name {name!r} is ambiguous: use one of {', '.join(error.candidates)}",
        ) from None
    except UnknownModel:
        raise NoRoute("model_not_found", f"unknown model {name!r}") from None


# ---------------------------------------------------------------- the eligibility cache

RANK_TTL = 0.25  # seconds a live-stats ranking (latency, availability) is reused
PARETO_LAYERS = 3
PER_LAYER = 3
CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class _Eligible:
    items: tuple[Item, ...]  # models passing the static hard filters, with their deployments
    pruned: tuple[Item, ...]  # the subset price-driven strategies score (see _prune)
    rejected: dict[str, int]


class _Cache:
    """Static filtering depends only on (snapshot, policy, needs, stream, mode, the context
    bucket), so its result is computed once per combination and reused; live-stats rankings
    are reused for RANK_TTL. Cleared when the snapshot changes."""

    def __init__(self) -> None:
        self.snapshot: CatalogSnapshot | None = None
        self.windows: tuple[int, ...] = ()
        self.eligible: dict[tuple[Any, ...], _Eligible] = {}
        self.ranks: dict[tuple[Any, ...], tuple[float, list[Item], str]] = {}

    def reset(self, snapshot: CatalogSnapshot) -> None:
        self.snapshot = snapshot
        self.windows = tuple(
            sorted({e.model.context_window for e in _index(snapshot) if e.model.context_window})
        )
        self.eligible = {}
        self.ranks = {}


_cache = _Cache()


def engine_cache_reset() -> None:
    """Forget cached eligibility and rankings (tests; they also reset on a new snapshot)."""
    _cache.snapshot = None


def _dominates(a: Item, b: Item) -> bool:
    ea, eb = a[0], b[0]
    return (
        ea.price_in_f <= eb.price_in_f
        and ea.price_out_f <= eb.price_out_f
        and (ea.price_in_f < eb.price_in_f or ea.price_out_f < eb.price_out_f)
    )


def _pareto_layers(items: list[Item], layers: int, per_layer: int) -> list[Item]:
    """The first ``layers`` non-dominated layers by (input, output) price: the k cheapest
    models under any positive mix of input and output tokens are in the first k layers.
    Models with equal prices are interchangeable for scoring; a layer keeps at most
    ``per_layer`` of them, different providers first."""
    rest = list(items)
    out: list[Item] = []
    for _ in range(layers):
        if not rest:
            break
        front = [p for p in rest if not any(_dominates(q, p) for q in rest)]
        rest = [p for p in rest if p not in front]
        front.sort(key=lambda i: (i[0].price_in_f + i[0].price_out_f, i[0].model.canonical_id))
        providers: set[str] = set()
        picked: list[Item] = []
        for item in front:  # one per provider first
            if item[0].model.provider not in providers:
                providers.add(item[0].model.provider)
                picked.append(item)
        picked += [i for i in front if i not in picked]
        out += picked[:per_layer]
    return out


def _prune(
    items: tuple[Item, ...], policy: EffectivePolicy, known: frozenset[str]
) -> tuple[Item, ...]:
    """What cost-first and balanced need to score: per quality tier the first Pareto layers by
    price (for unknown models, success depends only on the tier, so within a tier utility
    falls with cost); the most expensive models (``choose`` normalizes cost by the maximum);
    the cheapest model of each provider (for cross-provider fallbacks); models the estimator
    knows by name; the policy's preferred models."""
    if len(items) <= 24:
        return items
    keep: set[str] = set()
    by_tier: dict[int, list[Item]] = {}
    for item in items:
        by_tier.setdefault(item[0].model.quality_tier, []).append(item)
    for group in by_tier.values():
        keep.update(
            i[0].model.canonical_id for i in _pareto_layers(group, PARETO_LAYERS, PER_LAYER)
        )
    for price in (
        lambda i: i[0].price_in_f,
        lambda i: i[0].price_out_f,
        lambda i: i[0].price_in_f + i[0].price_out_f,
    ):
        keep.add(max(items, key=price)[0].model.canonical_id)
    cheapest: dict[str, Item] = {}
    for item in items:
        total = item[0].price_in_f + item[0].price_out_f
        for d in item[1]:
            best = cheapest.get(d.provider)
            if best is None or total < best[0].price_in_f + best[0].price_out_f:
                cheapest[d.provider] = item
    keep.update(i[0].model.canonical_id for i in cheapest.values())
    for item in items:
        cid = item[0].model.canonical_id
        if cid in known or (policy.preferred_models and matches(policy.preferred_models, cid)):
            keep.add(cid)
    return tuple(i for i in items if i[0].model.canonical_id in keep)


def _eligible(
    snapshot: CatalogSnapshot,
    request: RouteRequest,
    policy: EffectivePolicy,
    flt: _Filter,
    est: Estimate | None,
) -> tuple[tuple[Any, ...], _Eligible]:
    if _cache.snapshot is not snapshot:
        _cache.reset(snapshot)
    features = request.features
    need = features.input_tokens + (request.max_output_tokens or 0)
    bucket = bisect.bisect_left(_cache.windows, need)
    today = datetime.now(UTC).date()  # a model past its deprecation date leaves the pool
    key = (policy, flt.needs, request.stream, request.mode, bucket, today)
    found = _cache.eligible.get(key)
    if found is not None:
        return key, found
    items: list[Item] = []
    for entry in _index(snapshot):
        if entry.model.deprecated_on(today):
            flt._no("deprecated")
            continue
        if not flt.model_ok(entry):
            continue
        deployments = tuple(d for d in entry.deployments if flt.deployment_ok(d))
        if deployments:
            items.append((entry, deployments))
    known = frozenset(est.model_success) if est is not None else frozenset()
    all_items = tuple(items)
    found = _Eligible(all_items, _prune(all_items, policy, known), dict(flt.rejected))
    if len(_cache.eligible) >= CACHE_SIZE:
        _cache.eligible.clear()
        _cache.ranks.clear()
    _cache.eligible[key] = found
    return key, found


def _dynamic(items: tuple[Item, ...], flt: _Filter) -> tuple[Item, ...]:
    """The per-request filters: worst-case cost and live latency caps."""
    if flt.cost_cap is None and flt.policy.max_latency_ms is None:
        return items
    out = []
    for entry, deployments in items:
        if not flt.cost_ok(entry):
            continue
        kept = tuple(d for d in deployments if flt.latency_ok(d))
        if kept:
            out.append((entry, kept))
    return tuple(out)


# ---------------------------------------------------------------- the engine


def route(
    *,
    request: RouteRequest,
    policy: EffectivePolicy,
    snapshot: CatalogSnapshot | None = None,
    store: HealthStore | None = None,
    estimate_: Estimate | None = None,
) -> RouteDecision:
    """Route one request (see the module docstring). Raises NoRoute when nothing fits."""
    snapshot = snapshot or catalog_snapshot()
    store = store or health_store()
    fixed = not (request.model == AUTO or request.model.startswith(AUTO + ":"))
    # The complexity estimate chooses among models: a request that names its model needs only
    # its hard needs (read from the features) and token counts for the explanation.
    est: Estimate | None = estimate_
    if est is None and request.mode != "embedding" and not fixed:
        est = estimate(request.features)
    if fixed:
        strategy = "fixed"
    else:
        strategy = request.model.partition(":")[2] or policy.strategy
        if strategy not in STRATEGIES:
            raise NoRoute("model_not_found", f"unknown routing strategy {strategy!r}")
    flt = _Filter(request, policy, est, store)

    def usable(entry: _Entry) -> list[DeploymentInfo] | None:
        if not flt.model_ok(entry) or not flt.cost_ok(entry):
            return None
        deployments = [d for d in entry.deployments if flt.deployment_ok(d) and flt.latency_ok(d)]
        return deployments or None

    ordered: list[Any]
    considered = len(snapshot.deployments)
    if fixed:
        model = _resolve_model(snapshot, request.model)
        entry = _by_id(snapshot).get(model.canonical_id)
        if not policy.model_allowed(model.canonical_id):
            raise NoRoute(
                "model_not_allowed",
                f"the routing policy does not allow {model.canonical_id!r}",
                {"policy": policy.summary()},
            )
        considered = 1
        deployments = usable(entry) if entry is not None else None
        ordered = [(entry, deployments)] if entry is not None and deployments else []
        reason = "requested model"
    else:
        assert est is not None
        key, eligible = _eligible(snapshot, request, policy, flt, est)
        flt.rejected = dict(eligible.rejected)
        live = strategy in ("latency", "availability")
        pool = _dynamic(eligible.items if live else eligible.pruned, flt)
        if not pool:
            raise NoRoute(
                "no_eligible_model",
                "no model fits the request and the routing policy",
                {"strategy": strategy, "considered": considered, "rejected": flt.rejected},
            )
        rank_key = (key, strategy)
        cached = _cache.ranks.get(rank_key) if live and pool is eligible.items else None
        now = time.monotonic()
        if cached is not None and now - cached[0] < RANK_TTL:
            ordered, reason = list(cached[1]), cached[2]
        else:
            ordered, reason = _rank_models(strategy, list(pool), est, store, request.stream)
            if live and pool is eligible.items:
                _cache.ranks[rank_key] = (now, list(ordered), reason)
        if policy.preferred_models:
            preferred = policy.preferred_models
            ordered.sort(key=lambda item: not matches(preferred, item[0].model.canonical_id))
    chosen_models = list(ordered[:MAX_MODELS]) if not fixed else list(ordered)
    if not fixed and chosen_models:
        providers = {d.provider for _, ds in chosen_models for d in ds}
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
                chosen_models = [*chosen_models, other]
    # explicit fallbacks (nearest level wins), after the routed models
    seen = {e.model.canonical_id for e, _ in chosen_models}
    for name in policy.fallbacks:
        try:
            fallback = snapshot.resolve(name)
        except LookupError:
            flt._no("fallback_unknown")
            continue
        entry = _by_id(snapshot).get(fallback.canonical_id)
        if entry is None or fallback.canonical_id in seen:
            continue
        deployments = usable(entry)
        if deployments:
            chosen_models.append((entry, deployments))
            seen.add(fallback.canonical_id)
    candidates: list[RouteCandidate] = []
    if strategy == "availability":
        # interleave providers: the best deployment, then the best on another provider, ...
        pool_d = [(entry, d) for entry, ds in chosen_models for d in _order_deployments(store, ds)]
        last_provider = None
        while pool_d and len(candidates) < MAX_CANDIDATES:
            pick = next((p for p in pool_d if p[1].provider != last_provider), pool_d[0])
            pool_d.remove(pick)
            candidates.append(_candidate(*pick))
            last_provider = pick[1].provider
    else:
        for entry, ds in chosen_models:
            for d in _order_deployments(store, ds):
                candidates.append(_candidate(entry, d))
        if len(candidates) > MAX_CANDIDATES and not fixed:
            candidates = candidates[:MAX_CANDIDATES]
    # open breakers last (the failover loop skips them without a call)
    open_last = sorted(
        range(len(candidates)), key=lambda i: (_health_penalty(store, candidates[i].info)[0], i)
    )
    candidates = [candidates[i] for i in open_last]
    if not candidates:
        raise NoRoute(
            "no_eligible_model",
            f"no deployment of {request.model!r} fits the request and the routing policy",
            {"strategy": strategy, "considered": considered, "rejected": flt.rejected},
        )
    reference, note = reference_model_for(policy, snapshot)
    tokens: Estimate | _Tokens | None = est
    if tokens is None and request.mode != "embedding":
        tokens = _Tokens(request.features.input_tokens, guess_output_tokens(request.features))
    explain = _explain(strategy, reason, tokens, considered, flt, candidates, policy, snapshot)
    _explain_reference(explain, tokens, snapshot, reference, note)
    return RouteDecision(
        strategy=strategy,
        candidates=tuple(candidates),
        estimate=est,
        explain=explain,
        reference_model=reference,
    )


_by_id_cache: list[tuple[CatalogSnapshot, dict[str, _Entry]]] = []


def _by_id(snapshot: CatalogSnapshot) -> dict[str, _Entry]:
    cached = _by_id_cache[0] if _by_id_cache else None
    if cached is not None and cached[0] is snapshot:
        return cached[1]
    table = {e.model.canonical_id: e for e in _index(snapshot)}
    _by_id_cache[:] = [(snapshot, table)]
    return table


@dataclass(frozen=True, slots=True)
class _Tokens:
    """Token counts for the explanation's cost figures when no estimate was made."""

    input_tokens: int
    output_tokens: int


def _explain(
    strategy: str,
    reason: str,
    est: Estimate | _Tokens | None,
    considered: int,
    flt: _Filter,
    candidates: list[RouteCandidate],
    policy: EffectivePolicy,
    snapshot: CatalogSnapshot,
) -> dict[str, Any]:
    """Metadata only (no prompt text): small enough for a usage record and a header."""
    out: dict[str, Any] = {
        "strategy": strategy,
        "reason": reason,
        "considered": considered,
        "rejected": dict(flt.rejected),
        "candidates": [
            {"model": c.model_id, "deployment": c.deployment, "provider": c.provider}
            for c in candidates
        ],
        "policy": policy.summary(),
    }
    if isinstance(est, Estimate):
        out["tier"] = est.tier
        out["difficulty"] = round(est.difficulty, 3)
    if est is not None:
        chosen = candidates[0]
        cost = (
            chosen.input_per_token * est.input_tokens + chosen.output_per_token * est.output_tokens
        )
        out["estimated_cost_usd"] = str(cost.quantize(Decimal("0.00000001")))
    return out


def _explain_reference(
    out: dict[str, Any],
    est: Estimate | _Tokens | None,
    snapshot: CatalogSnapshot,
    reference: str,
    note: str | None,
) -> None:
    """The reference model savings are measured against and, with an estimate, its list-price
    cost of the estimate's tokens (the saving the route is expected to make)."""
    out["reference_model"] = reference
    if note:
        out["reference_model_note"] = note
    if est is None:
        return
    try:
        price = snapshot.resolve(reference).current_price
    except LookupError:
        price = None
    if price is not None:
        ref_cost = (
            price.input_per_token * est.input_tokens + price.output_per_token * est.output_tokens
        )
        out["reference_cost_usd"] = str(ref_cost.quantize(Decimal("0.00000001")))


def route_timed(**kwargs: Any) -> tuple[RouteDecision, float]:
    """``route`` and its duration in seconds (benchmarks, metrics)."""
    start = time.perf_counter()
    decision = route(**kwargs)
    return decision, time.perf_counter() - start


async def aroute_for_key(
    *,
    request: RouteRequest,
    key: Any,
    override: Any = None,
    store: HealthStore | None = None,
) -> tuple[RouteDecision, EffectivePolicy]:
    """For async views: the catalog snapshot and the policy table come from their in-process
    caches (no thread hop and no database work while fresh), then ``route``. ``key`` is an
    orgs KeyContext, ``override`` a ``routing.policies.RequestOverride`` or None."""
    from routing.catalog import acatalog_snapshot
    from routing.policies import apolicy_for_key

    snapshot = await acatalog_snapshot()
    policy = await apolicy_for_key(key, override)
    return route(request=request, policy=policy, snapshot=snapshot, store=store), policy
