"""The routing engine's hard filters and the per-snapshot indexes they run over.

``Filter`` holds one request's filters and counts what each removed (the explanation's
``rejected``); ``eligible`` caches, per catalog snapshot, the result of the static filters for
each (policy, needs, stream, mode, context bucket, day) combination, and the subset the
price-driven strategies score (``prune``). Pure Python over the in-process snapshot and the
health view: no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from routing.catalog import CatalogSnapshot, DeploymentInfo, ModelInfo, PriceVersion
from routing.health import HealthStore
from routing.policies import EffectivePolicy, matches
from routing.pricing import worst_case_cost
from routing.tokens import DEFAULT_OUTPUT_TOKENS

MILLION = Decimal(1_000_000)
CHAT_MODES = ("chat", "responses", "completion")

# Capabilities a request may need: the model field that says whether a model has it, and how
# a refusal names it. The gateway's wire parsers record which parameter asked for each.
CAP_TOOLS = "tools"
CAP_VISION = "vision"
CAP_JSON_SCHEMA = "json_schema"
CAP_REASONING = "reasoning"
CAPABILITIES: Mapping[str, tuple[str, str]] = {
    CAP_TOOLS: ("supports_tools", "tool calling"),
    CAP_VISION: ("supports_vision", "image input"),
    CAP_JSON_SCHEMA: ("supports_json_schema", "JSON schema output"),
    CAP_REASONING: ("supports_reasoning", "reasoning effort"),
}

PARETO_LAYERS = 3
PER_LAYER = 3
CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class Entry:
    """A model with enabled deployments and its current price (floats for scoring)."""

    model: ModelInfo
    deployments: tuple[DeploymentInfo, ...]
    price: PriceVersion | None
    price_in: Decimal
    price_out: Decimal
    price_in_f: float
    price_out_f: float

    @property
    def priced(self) -> bool:
        return self.price is not None


Item = tuple[Entry, tuple[DeploymentInfo, ...]]  # a model and its usable deployments


def capability_gaps(model: ModelInfo, needs: frozenset[str]) -> list[str]:
    """The capabilities in ``needs`` that ``model`` lacks, in a stable order."""
    return [
        cap
        for cap in sorted(needs)
        if cap in CAPABILITIES and not getattr(model, CAPABILITIES[cap][0])
    ]


def dimensions_ok(model: ModelInfo, dimensions: int | None) -> bool:
    """An embedding model takes ``dimensions`` up to its vector size (when the catalog knows
    it; otherwise the provider decides)."""
    size = model.output_vector_size
    return dimensions is None or size is None or dimensions <= size


def worst_case_tokens(model: ModelInfo, max_output_tokens: int | None) -> int:
    """The output a worst case assumes: the request's max_tokens, else the model's max output,
    else DEFAULT_OUTPUT_TOKENS."""
    return max_output_tokens or model.max_output_tokens or DEFAULT_OUTPUT_TOKENS


# ---------------------------------------------------------------- indexes per snapshot


@dataclass
class _Indexes:
    snapshot: CatalogSnapshot | None = None
    entries: tuple[Entry, ...] = ()
    by_id: dict[str, Entry] = field(default_factory=dict)
    windows: tuple[int, ...] = ()
    vector_sizes: tuple[int, ...] = ()
    eligible: dict[tuple[Any, ...], Eligible] = field(default_factory=dict)
    ranks: dict[tuple[Any, ...], tuple[float, list[Item], str]] = field(default_factory=dict)


_indexes = _Indexes()


def indexes(snapshot: CatalogSnapshot) -> _Indexes:
    """The snapshot's model index (built once per snapshot object: a rebuilt snapshot is a new
    object even when its token is the same), with empty caches for a new snapshot."""
    if _indexes.snapshot is snapshot:
        return _indexes
    entries = tuple(sorted(_entries(snapshot), key=lambda e: e.model.canonical_id))
    _indexes.snapshot = snapshot
    _indexes.entries = entries
    _indexes.by_id = {e.model.canonical_id: e for e in entries}
    _indexes.windows = tuple(
        sorted({e.model.context_window for e in entries if e.model.context_window})
    )
    _indexes.vector_sizes = tuple(
        sorted({e.model.output_vector_size for e in entries if e.model.output_vector_size})
    )
    _indexes.eligible = {}
    _indexes.ranks = {}
    return _indexes


def indexes_reset() -> None:
    """Forget the index and the cached eligibility and rankings (tests)."""
    _indexes.snapshot = None


def _entries(snapshot: CatalogSnapshot) -> list[Entry]:
    out = []
    for model_id, deployments in snapshot.deployments.items():
        model = snapshot.models[model_id]
        price = model.current_price
        pin = price.input_per_token if price else Decimal(0)
        pout = price.output_per_token if price else Decimal(0)
        out.append(
            Entry(
                model=model,
                deployments=tuple(sorted(deployments, key=lambda d: (d.priority, -d.weight, d.id))),
                price=price,
                price_in=pin,
                price_out=pout,
                price_in_f=float(pin),
                price_out_f=float(pout),
            )
        )
    return out


# ---------------------------------------------------------------- the filters


class Filter:
    """Hard filters for one request; counts what each one removed (for the explanation)."""

    __slots__ = (
        "dimensions",
        "input_tokens",
        "max_output",
        "mode",
        "needs",
        "policy",
        "rejected",
        "store",
        "stream",
    )

    def __init__(
        self,
        *,
        policy: EffectivePolicy,
        store: HealthStore,
        needs: frozenset[str],
        input_tokens: int,
        max_output: int | None,
        stream: bool,
        mode: str,
        dimensions: int | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.needs = needs
        self.input_tokens = input_tokens
        self.max_output = max_output
        self.stream = stream
        self.mode = mode
        self.dimensions = dimensions
        self.rejected: dict[str, int] = {}

    def no(self, reason: str) -> bool:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return False

    def model_reason(self, entry: Entry) -> str | None:
        """Why the model is out (None: it passes the static filters)."""
        m = entry.model
        if not mode_ok(m, self.mode):
            return "mode"
        policy = self.policy
        if (policy.blocked_models or policy.allowed_model_groups) and not policy.model_allowed(
            m.canonical_id
        ):
            return "policy_model"
        if capability_gaps(m, self.needs):
            return "capability"
        if self.stream and not m.supports_streaming:
            return "streaming"
        if not dimensions_ok(m, self.dimensions):
            return "dimensions"
        if (
            m.context_window is not None
            and self.input_tokens + (self.max_output or 0) > m.context_window
        ):
            return "context_window"
        if policy.quality_floor is not None and m.quality_tier < policy.quality_floor:
            return "quality_floor"
        cap = policy.max_price_per_million
        if cap is not None and (
            not entry.priced or entry.price_in > cap / MILLION or entry.price_out > cap / MILLION
        ):
            return "price_cap"
        return None

    def model_ok(self, entry: Entry) -> bool:
        reason = self.model_reason(entry)
        return True if reason is None else self.no(reason)

    def worst_case(self, entry: Entry) -> Decimal | None:
        """This request's worst-case cost at the model (None: unpriced)."""
        if entry.price is None:
            return None
        output = worst_case_tokens(entry.model, self.max_output)
        return worst_case_cost(entry.price, input_tokens=self.input_tokens, output_tokens=output)

    def cost_ok(self, entry: Entry) -> bool:
        """Per request (depends on the prompt's size): the worst-case cost cap."""
        cap = self.policy.max_cost_per_request_usd
        if cap is None:
            return True
        worst = self.worst_case(entry)
        return True if worst is None or worst <= cap else self.no("max_cost")

    def deployment_reason(self, d: DeploymentInfo) -> str | None:
        policy = self.policy
        if (
            policy.blocked_providers or policy.allowed_provider_groups
        ) and not policy.provider_allowed(d.provider):
            return "policy_provider"
        if policy.region_groups and not policy.region_allowed(d.region):
            return "region"
        if policy.zero_data_retention_only and not d.zero_data_retention:
            return "zero_data_retention"
        return None

    def latency_ok(self, d: DeploymentInfo) -> bool:
        """Live: the deployment's EWMA latency (time to first token for streams) is known and
        above the policy's cap."""
        cap = self.policy.max_latency_ms
        if cap is None:
            return True
        stats = self.store.view(d.id)
        if stats is not None:
            seen = stats.ttft_ms if self.stream else stats.latency_ms
            if seen is not None and seen > cap:
                return self.no("max_latency")
        return True

    def deployments(self, entry: Entry) -> tuple[DeploymentInfo, ...]:
        """The model's deployments that pass the per-deployment filters, live latency included."""
        kept = []
        for d in entry.deployments:
            reason = self.deployment_reason(d)
            if reason is not None:
                self.no(reason)
            elif self.latency_ok(d):
                kept.append(d)
        return tuple(kept)


def mode_ok(model: ModelInfo, mode: str) -> bool:
    if mode == "embedding":
        return model.mode == "embedding"
    return model.mode in CHAT_MODES


# ---------------------------------------------------------------- auto: the eligible pool


@dataclass(frozen=True, slots=True)
class Eligible:
    items: tuple[Item, ...]  # models passing the static hard filters, with their deployments
    pruned: tuple[Item, ...]  # the subset price-driven strategies score (see prune)
    rejected: dict[str, int]


def eligible(
    snapshot: CatalogSnapshot, flt: Filter, today: date, known: frozenset[str]
) -> tuple[tuple[Any, ...], Eligible]:
    """The models ``auto`` may choose from (static filters; cached per combination). A model
    past its deprecation date is left out. ``known``: models the estimator knows by name."""
    idx = indexes(snapshot)
    bucket = bisect.bisect_left(idx.windows, flt.input_tokens + (flt.max_output or 0))
    # the vector sizes below the dimensions asked: models with one of them are out
    dims = bisect.bisect_left(idx.vector_sizes, flt.dimensions) if flt.dimensions else -1
    key = (flt.policy, flt.needs, flt.stream, flt.mode, bucket, dims, today)
    found = idx.eligible.get(key)
    if found is not None:
        return key, found
    items: list[Item] = []
    for entry in idx.entries:
        if entry.model.deprecated_on(today):
            flt.no("deprecated")
        elif flt.dimensions and entry.model.output_vector_size is None:
            flt.no("dimensions")  # auto asks the catalog: a size it does not know is out
        elif entry.model.mode == "completion":
            # text-completion (base) models take a chat request when asked for by name, but
            # auto does not choose them: they are not tuned to follow a conversation
            flt.no("mode")
        elif flt.model_ok(entry):
            deployments = tuple(d for d in entry.deployments if _static_ok(flt, d))
            if deployments:
                items.append((entry, deployments))
    all_items = tuple(items)
    found = Eligible(all_items, prune(all_items, flt.policy, known), dict(flt.rejected))
    if len(idx.eligible) >= CACHE_SIZE:
        idx.eligible.clear()
        idx.ranks.clear()
    idx.eligible[key] = found
    return key, found


def _static_ok(flt: Filter, d: DeploymentInfo) -> bool:
    reason = flt.deployment_reason(d)
    return True if reason is None else flt.no(reason)


def dynamic(items: tuple[Item, ...], flt: Filter) -> tuple[Item, ...]:
    """The per-request filters: worst-case cost and live latency caps."""
    if flt.policy.max_cost_per_request_usd is None and flt.policy.max_latency_ms is None:
        return items
    out = []
    for entry, deployments in items:
        if not flt.cost_ok(entry):
            continue
        kept = tuple(d for d in deployments if flt.latency_ok(d))
        if kept:
            out.append((entry, kept))
    return tuple(out)


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


def prune(
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
