"""How ``auto`` orders the eligible models under each strategy (docs/routing.md, "Steps"):

- ``cost``: the cheapest expected cost among models of at least the estimated tier (and the
  quality floor); when none reaches the tier, the cheapest of the best tier available;
- ``balanced``: ``routing.complexity.choose`` at willingness 0.5 (predicted quality against
  expected cost), minus penalties for live latency and error rate;
- ``latency``: the fastest deployment now (EWMA time to first token for streams, total latency
  otherwise; a tier-based prior without samples), weighted by its error rate;
- ``availability``: the most reliable deployments (lowest error rate, breaker closed, most
  samples).

Each returns the models best first and a one-line reason for the explanation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from routing.breaker import cooling
from routing.catalog import DeploymentInfo
from routing.complexity import TIER_PRIORS, Candidate, Estimate, choose
from routing.eligibility import Item
from routing.health import HealthStore

BALANCED_WILLINGNESS = 0.5
LATENCY_PRIOR_MS = 400.0  # per quality tier, for a deployment without samples

Ranking = tuple[list[Item], str]


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
    store: HealthStore, deployments: Sequence[DeploymentInfo]
) -> list[DeploymentInfo]:
    """Within a model: breaker state, then priority (lower first), weight, id."""
    if len(deployments) < 2:
        return list(deployments)
    return sorted(
        deployments, key=lambda d: (health_penalty(store, d)[0], d.priority, -d.weight, d.id)
    )


def expected_cost(item: Item, est: Estimate) -> float:
    entry = item[0]
    return entry.price_in_f * est.input_tokens + entry.price_out_f * est.output_tokens


def by_cost(eligible: list[Item], est: Estimate, store: HealthStore, stream: bool) -> Ranking:
    best_tier = max(e.model.quality_tier for e, _ in eligible)
    tier = min(est.tier, best_tier)
    pool = [item for item in eligible if item[0].model.quality_tier >= tier]
    pool.sort(key=lambda item: (expected_cost(item, est), -item[0].model.quality_tier))
    rest = [item for item in eligible if item[0].model.quality_tier < tier]
    rest.sort(key=lambda item: (-item[0].model.quality_tier, expected_cost(item, est)))
    return pool + rest, f"cheapest expected cost at quality tier >= {tier}"


def by_latency(eligible: list[Item], est: Estimate, store: HealthStore, stream: bool) -> Ranking:
    def speed(item: Item) -> float:
        entry, deployments = item
        return min(
            latency_ms(store, d, entry.model.quality_tier, stream)
            * (1 + 4 * health_penalty(store, d)[1])
            + 1e6 * health_penalty(store, d)[0]
            for d in deployments
        )

    ranked = sorted(eligible, key=lambda item: (speed(item), expected_cost(item, est)))
    return ranked, "fastest deployment now (live EWMA latency, error-weighted)"


def by_availability(
    eligible: list[Item], est: Estimate, store: HealthStore, stream: bool
) -> Ranking:
    def reliability(item: Item) -> tuple[float, ...]:
        deployments = item[1]
        best = min((*health_penalty(store, d), -min(_samples(store, d), 50)) for d in deployments)
        return (*best, -len(deployments), expected_cost(item, est))

    ranked = sorted(eligible, key=reliability)
    return ranked, "most reliable deployments (error rate, breaker), backups on other providers"


def by_balance(eligible: list[Item], est: Estimate, store: HealthStore, stream: bool) -> Ranking:
    by_id = {item[0].model.canonical_id: item for item in eligible}
    ranked = choose(
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
    for r in ranked:
        item = by_id[r.candidate.model_id]
        entry, deployments = item
        fastest = min(latency_ms(store, d, entry.model.quality_tier, stream) for d in deployments)
        error = min(health_penalty(store, d)[1] for d in deployments)
        utility = r.utility - 0.05 * min(fastest / 10_000.0, 1.0) - 0.5 * error
        scored.append((-utility, r.expected_cost, entry.model.canonical_id, item))
    scored.sort(key=lambda t: t[:3])
    return [t[3] for t in scored], "predicted quality vs expected cost, live latency and errors"


def _samples(store: HealthStore, d: DeploymentInfo) -> int:
    stats = store.view(d.id)
    return stats.samples if stats is not None else 0


RANKERS: dict[str, Callable[[list[Item], Estimate, HealthStore, bool], Ranking]] = {
    "cost": by_cost,
    "latency": by_latency,
    "availability": by_availability,
    "balanced": by_balance,
}
LIVE = frozenset({"latency", "availability"})  # rankings that read live stats
