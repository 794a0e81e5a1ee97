"""How ``auto`` orders the eligible models under each strategy (docs/routing.md, "Steps"):

- ``cost``: the cheapest expected cost among models of at least the estimated tier (and the
  quality floor); when none reaches the tier, the cheapest of the best tier available;
- ``balanced``: ``routing.complexity.choose`` at the policy's ``cost_quality`` (0.5 unless a
  level sets it): predicted quality against expected cost relative to the reference model's,
  minus penalties for live latency and error rate;
- ``latency``: the fastest deployment now (EWMA time to first token for streams, total latency
  otherwise; a tier-based prior without samples), weighted by its error rate;
- ``availability``: the most reliable deployments (lowest error rate, breaker closed, most
  samples).

``cost``, ``latency`` and ``availability`` rank the models of at least the estimated tier first
(the best tier available when none reaches it), then the lower tiers.

Each returns the models best first and a one-line reason for the explanation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from routing.breaker import cooling
from routing.catalog import DeploymentInfo
from routing.complexity import TIER_PRIORS, Candidate, Estimate, choose
from routing.eligibility import Item
from routing.health import HealthStore
from routing.stickiness import MIN_CACHED_TOKENS, CacheHolder

DEFAULT_COST_QUALITY = 0.5  # balanced's willingness to pay when no policy level sets it
LATENCY_PRIOR_MS = 400.0  # per quality tier, for a deployment without samples

Ranking = tuple[list[Item], str]


@dataclass(frozen=True, slots=True)
class Trade:
    """What balanced trades: the willingness to pay for predicted quality (the policy's
    ``cost_quality``: 0 cheapest, 1 best) and the reference model's expected cost of this
    request, the unit of the cost term (None: the most expensive candidate's)."""

    willingness: float = DEFAULT_COST_QUALITY
    reference_cost: float | None = None
    reference_model: str = ""


_rng = random.Random()  # noqa: S311 (load spreading, not secrets)


def latency_ms(store: HealthStore, d: DeploymentInfo, tier: int, stream: bool) -> float:
    stats = store.view(d.id)
    if stats is not None:
        seen = stats.ttft_ms if stream else stats.latency_ms
        if seen is not None:
            return seen
    return LATENCY_PRIOR_MS * tier


def health_penalty(store: HealthStore, d: DeploymentInfo) -> tuple[int, float]:
    """(1 while the breaker is open and cooling down, the EWMA error rate). A deployment
    whose cool-down is over keeps its place, so live traffic makes its half-open trial."""
    stats = store.view(d.id)
    if stats is None:
        return (0, 0.0)
    return (1 if cooling(stats) else 0, stats.error_rate)


def order_deployments(
    store: HealthStore,
    deployments: Sequence[DeploymentInfo],
    *,
    strategy: str = "",
    stream: bool = False,
    rng: random.Random | None = None,
) -> list[DeploymentInfo]:
    """Within a model: breakers cooling down last, then priority (lower first); among equals,
    traffic is spread. Under ``latency`` the least loaded fast one leads (EWMA latency times
    one plus the requests in flight, error-weighted); otherwise a weighted random order, each
    deployment first with probability weight / the group's total (weight 0: only when the
    others fail)."""
    if len(deployments) < 2:
        return list(deployments)
    draw = (rng or _rng).random

    def key(d: DeploymentInfo) -> tuple[int, int, float, int]:
        cooling_flag, error = health_penalty(store, d)
        if strategy == "latency":
            stats = store.view(d.id)
            load = 1 + (stats.in_flight if stats is not None else 0)
            spread = latency_ms(store, d, 1, stream) * load * (1 + 4 * error)
        else:  # an exponential race: the smallest of Exp(w_i) is i with probability w_i / sum
            spread = -math.log(1.0 - draw()) / d.weight if d.weight else math.inf
        return (cooling_flag, d.priority, spread, d.id)

    return sorted(deployments, key=key)


def why_deployment(
    store: HealthStore,
    deployments: Sequence[DeploymentInfo],
    picked: DeploymentInfo,
    strategy: str,
) -> str:
    """One line for the explanation: why ``picked`` leads among its model's deployments."""
    if len(deployments) < 2:
        return "the model's only deployment"
    if health_penalty(store, picked)[0]:
        return "every deployment's breaker is open"
    peers = [
        d for d in deployments if d.priority == picked.priority and not health_penalty(store, d)[0]
    ]
    others = len(deployments) - len(peers)
    tail = f"; {others} more by priority or breaker" if others else ""
    if len(peers) < 2:
        return f"priority {picked.priority}{tail}"
    if strategy == "latency":
        stats = store.view(picked.id)
        load = stats.in_flight if stats is not None else 0
        return f"least loaded fast one of {len(peers)} ({load} in flight){tail}"
    total = sum(d.weight for d in peers)
    return f"weighted random: weight {picked.weight} of {total} among {len(peers)}{tail}"


def expected_cost(item: Item, est: Estimate) -> float:
    entry = item[0]
    return entry.price_in_f * est.input_tokens + entry.price_out_f * est.output_tokens


def _tiered(
    eligible: list[Item], est: Estimate, key: Callable[[Item], tuple[float, ...]]
) -> tuple[list[Item], int]:
    """Models of at least the estimated tier (the best tier available when none reaches it)
    ordered by ``key``, then the lower tiers, best tier first: cost, latency and availability
    first all stay among the models predicted to answer the request well."""
    best_tier = max(e.model.quality_tier for e, _ in eligible)
    tier = min(est.tier, best_tier)
    pool = sorted((item for item in eligible if item[0].model.quality_tier >= tier), key=key)
    rest = [item for item in eligible if item[0].model.quality_tier < tier]
    rest.sort(key=lambda item: (-item[0].model.quality_tier, *key(item)))
    return pool + rest, tier


def by_cost(
    eligible: list[Item], est: Estimate, store: HealthStore, stream: bool, trade: Trade
) -> Ranking:
    ranked, tier = _tiered(
        eligible, est, lambda item: (expected_cost(item, est), -item[0].model.quality_tier)
    )
    return ranked, f"cheapest expected cost at quality tier >= {tier}"


def by_latency(
    eligible: list[Item], est: Estimate, store: HealthStore, stream: bool, trade: Trade
) -> Ranking:
    def speed(item: Item) -> float:
        entry, deployments = item
        return min(
            latency_ms(store, d, entry.model.quality_tier, stream)
            * (1 + 4 * health_penalty(store, d)[1])
            + 1e6 * health_penalty(store, d)[0]
            for d in deployments
        )

    ranked, tier = _tiered(eligible, est, lambda item: (speed(item), expected_cost(item, est)))
    return ranked, f"fastest deployment now (live EWMA latency, error-weighted) at tier >= {tier}"


def by_availability(
    eligible: list[Item], est: Estimate, store: HealthStore, stream: bool, trade: Trade
) -> Ranking:
    def reliability(item: Item) -> tuple[float, ...]:
        deployments = item[1]
        best = min((*health_penalty(store, d), -min(_samples(store, d), 50)) for d in deployments)
        return (*best, -len(deployments), expected_cost(item, est))

    ranked, tier = _tiered(eligible, est, reliability)
    return ranked, (
        f"most reliable deployments (error rate, breaker) at tier >= {tier}, backups on other "
        "providers"
    )


def by_balance(
    eligible: list[Item], est: Estimate, store: HealthStore, stream: bool, trade: Trade
) -> Ranking:
    by_id = {item[0].model.canonical_id: item for item in eligible}
    ranked = choose(
        [
            Candidate(
                e.model.canonical_id,
                e.price_in_f,
                e.price_out_f,
                TIER_PRIORS[min(max(e.model.quality_tier, 1), len(TIER_PRIORS)) - 1],
                e.model.quality_tier,
            )
            for e, _ in eligible
        ],
        est,
        trade.willingness,
        reference_cost=trade.reference_cost,
    )
    scored = []
    for r in ranked:
        item = by_id[r.candidate.model_id]
        entry, deployments = item
        fastest = min(latency_ms(store, d, entry.model.quality_tier, stream) for d in deployments)
        error = min(health_penalty(store, d)[1] for d in deployments)
        utility = r.utility - 0.05 * min(fastest / 10_000.0, 1.0) - 0.5 * error
        scored.append((-utility, r.expected_cost, entry.model.canonical_id, item))
    scored.sort(key=lambda t: t[:3])
    unit = trade.reference_model if trade.reference_cost else "the most expensive candidate"
    return [t[3] for t in scored], (
        f"predicted quality vs expected cost relative to {unit}'s at cost_quality "
        f"{trade.willingness:g}, live latency and errors"
    )


def stay_or_switch(
    ordered: list[Item], holder: CacheHolder, est: Estimate
) -> tuple[list[Item], dict[str, Any]]:
    """A continuing conversation's models: the deployment holding its prompt cache first when
    the model still fits (it is in ``ordered``: every filter passed), reaches the tier the
    request needs, and this turn costs no more there, its previous prompt at the cached-input
    price, than on the strategy's own pick with a cold cache. When the holder's model is the
    strategy's own pick, its deployment just goes first. The note says what was weighed;
    ``cache_lost_usd`` is the cached-input discount given up by switching (0 when staying)."""
    note: dict[str, Any] = {"model": holder.model_id}
    index = next(
        (
            i
            for i, (entry, ds) in enumerate(ordered)
            if entry.model.canonical_id == holder.model_id
            and any(d.id == holder.deployment_id for d in ds)
        ),
        None,
    )
    if index is None:
        note.update(kept=False, why="the deployment holding the cache does not fit this request")
        return ordered, note
    entry, deployments = ordered[index]
    need = min(est.tier, max(e.model.quality_tier for e, _ in ordered))
    cached_price = entry.price.cached_input_per_token if entry.price is not None else None
    cached = min(holder.prompt_tokens, est.input_tokens)
    if cached_price is None or cached < MIN_CACHED_TOKENS:
        note.update(kept=False, why="nothing cached to stay for")
        return ordered, note
    discount = (entry.price_in_f - float(cached_price)) * cached
    stay = expected_cost(ordered[index], est) - discount
    switch = expected_cost(ordered[0], est)
    note.update(cached_tokens_estimate=cached, stay_usd=f"{stay:.8f}", switch_usd=f"{switch:.8f}")
    if index and entry.model.quality_tier < need:  # (the strategy's own pick always stays)
        note.update(kept=False, why=f"below the tier this turn needs ({need})")
    elif index and stay > switch:
        note.update(kept=False, why="switching is cheaper")
    else:
        pinned = tuple(d for d in deployments if d.id == holder.deployment_id)
        rest = tuple(d for d in deployments if d.id != holder.deployment_id)
        front: list[Item] = [(entry, pinned)]
        behind: list[Item] = [(entry, rest)] if rest else []
        note.update(kept=True, cache_lost_usd="0.00000000")
        return front + ordered[:index] + behind + ordered[index + 1 :], note
    note["cache_lost_usd"] = f"{max(discount, 0.0):.8f}"
    return ordered, note


def _samples(store: HealthStore, d: DeploymentInfo) -> int:
    stats = store.view(d.id)
    return stats.samples if stats is not None else 0


RANKERS: dict[str, Callable[[list[Item], Estimate, HealthStore, bool, Trade], Ranking]] = {
    "cost": by_cost,
    "latency": by_latency,
    "availability": by_availability,
    "balanced": by_balance,
}
LIVE = frozenset({"latency", "availability"})  # rankings that read live stats
