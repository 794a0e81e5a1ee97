"""Load balancing across the deployments of one model: weights, least loaded under latency,
the explanation, and deployment rate limits (RPM / TPM) shared by every process through
Redis (two limiters on one prefix stand for two gateway processes; `make chaos`'s
'load-spread' runs the same across two real gateway workers)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
from django.conf import settings

from routing import strategies
from routing.complexity import RequestFeatures
from routing.engine import RouteRequest, route
from routing.failover import FailoverExhausted, run_with_failover
from routing.health import HealthConfig, LocalHealth
from routing.models import Deployment
from routing.policies import PolicySpec, policy_merge
from routing.ratelimit import LocalLimiter, RedisLimiter
from tests.routing.factories import ModelFactory, ProviderFactory

BACKENDS = ["local", "redis"]


@pytest.fixture
def spread(db):
    """One model with three deployments of weights 1, 2 and 7 (same priority)."""
    provider = ProviderFactory(slug="gamma")
    model = ModelFactory(provider=provider, provider_model_name="g-one")
    return {
        name: Deployment.objects.create(name=name, model=model, provider=provider, weight=w)
        for name, w in (("g-1", 1), ("g-2", 2), ("g-7", 7))
    }


def _route(store, strategy="balanced"):
    features = RequestFeatures.from_messages([{"role": "user", "content": "hi"}])
    return route(
        request=RouteRequest(features=features, model="gamma/g-one"),
        policy=policy_merge([("organization", PolicySpec(strategy=strategy))]),
        store=store,
    )


def test_traffic_follows_the_weights(spread, monkeypatch):
    monkeypatch.setattr(strategies, "_rng", random.Random(7))
    store = LocalHealth(HealthConfig())
    first = Counter(_route(store).candidates[0].deployment for _ in range(5000))
    for name, weight in (("g-1", 1), ("g-2", 2), ("g-7", 7)):
        share = first[name] / 5000
        assert abs(share - weight / 10) <= 0.1 * weight / 10, (name, share)
    decision = _route(store)
    assert len(decision.candidates) == 3  # the others stay behind it as fallbacks
    picked = decision.explain["deployment"]
    assert picked["picked"] == decision.candidates[0].deployment
    assert picked["why"].startswith("weighted random: weight ")
    assert picked["why"].endswith(" of 10 among 3")


def test_weight_zero_is_only_a_fallback_and_priority_still_comes_first(spread):
    Deployment.objects.filter(name="g-7").update(weight=0)
    Deployment.objects.filter(name="g-1").update(priority=1)
    store = LocalHealth(HealthConfig())
    orders = {tuple(c.deployment for c in _route(store).candidates) for _ in range(200)}
    assert orders == {("g-2", "g-7", "g-1")}
    why = _route(store).explain["deployment"]["why"]
    assert why == "weighted random: weight 2 of 2 among 2; 1 more by priority or breaker"


def test_latency_first_picks_the_least_loaded_fast_deployment(spread):
    store = LocalHealth(HealthConfig(alpha=1.0))
    ids = {name: d.pk for name, d in spread.items()}
    for name, ms in (("g-1", 100.0), ("g-2", 120.0), ("g-7", 400.0)):
        store.record(ids[name], ok=True, latency_ms=ms)

    def order():
        decision = _route(store, "latency")
        return [c.deployment for c in decision.candidates], decision.explain["deployment"]

    assert order()[0] == ["g-1", "g-2", "g-7"]
    store.started(ids["g-1"])  # 100 ms x 2 in flight > 120 ms x 1
    names, why = order()
    assert names == ["g-2", "g-1", "g-7"]
    assert why["why"] == "least loaded fast one of 3 (0 in flight)"


# ---------------------------------------------------------------- deployment rate limits


def _limiters(kind: str, count: int = 2):
    if kind == "local":
        one = LocalLimiter()
        return [one] * count  # one process
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set (embedded mode)")
    prefix = f"test:limit:{uuid.uuid4().hex}"
    return [RedisLimiter(settings.REDIS_URL, prefix=prefix) for _ in range(count)]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_rpm_is_never_exceeded_across_processes(kind):
    a, b = _limiters(kind)
    results = await asyncio.gather(
        *((a if i % 2 else b).acquire(41, rpm=50, tpm=None, tokens=10) for i in range(200))
    )
    admitted = [r for r in results if r is None]
    assert len(admitted) == 50
    waits = [r for r in results if r is not None]
    assert all(0 < w <= 60 for w in waits)  # until the first of the window leaves it
    assert await a.acquire(42, rpm=50, tpm=None, tokens=0) is None  # per deployment


@pytest.mark.parametrize("kind", BACKENDS)
async def test_tpm_counts_the_estimate_then_what_was_used(kind):
    a, b = _limiters(kind)
    assert await a.acquire(7, rpm=None, tpm=1000, tokens=400) is None
    assert await b.acquire(7, rpm=None, tpm=1000, tokens=400) is None
    assert await a.acquire(7, rpm=None, tpm=1000, tokens=400) is not None  # 1200 > 1000
    await b.used(7, -100)  # negative rests are ignored: the estimate stays counted
    assert await b.acquire(7, rpm=None, tpm=1000, tokens=150) is None  # 950
    await a.used(7, 100)  # a completion of 100 more
    wait = await b.acquire(7, rpm=None, tpm=1000, tokens=10)
    assert wait is not None and 0 < wait <= 60


async def test_a_window_frees_after_sixty_seconds():
    """(In-process, on a stated clock; the Redis script uses Redis's own TIME.)"""
    now = [1000.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    assert await limiter.acquire(1, rpm=2, tpm=None, tokens=0) is None
    now[0] += 30
    assert await limiter.acquire(1, rpm=2, tpm=None, tokens=0) is None
    assert await limiter.acquire(1, rpm=2, tpm=None, tokens=0) == pytest.approx(30.0)
    now[0] += 30.001  # the first left the window
    assert await limiter.acquire(1, rpm=2, tpm=None, tokens=0) is None


@dataclass(frozen=True)
class Cand:
    deployment_id: int
    deployment: str
    model_id: str = "m/one"
    provider: str = "p"
    context_window: int | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None


async def test_a_deployment_at_its_limit_is_passed_over_and_all_at_it_is_429():
    limiter = LocalLimiter()
    store = LocalHealth(HealthConfig())
    limited = Cand(1, "limited", rpm_limit=1)
    other = Cand(2, "other", rpm_limit=1)
    called = []

    async def attempt(candidate, budget):
        called.append(candidate.deployment)
        return "ok"

    first = await run_with_failover([limited, other], attempt, store=store, limiter=limiter)
    second = await run_with_failover([limited, other], attempt, store=store, limiter=limiter)
    assert (first.candidate.deployment, second.candidate.deployment) == ("limited", "other")
    assert [a.outcome for a in second.attempts] == ["skipped_rate_limited", "ok"]
    with pytest.raises(FailoverExhausted) as caught:
        await run_with_failover([limited, other], attempt, store=store, limiter=limiter)
    outcomes = [(a.outcome, 0 < a.retry_after <= 60) for a in caught.value.attempts]
    assert outcomes == [("skipped_rate_limited", True)] * 2
    assert called == ["limited", "other"]  # no call beyond the limits
