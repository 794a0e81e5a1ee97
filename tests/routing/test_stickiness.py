"""Cache-aware conversations: the identity (a keyed hash), the holder maps (in-process and
Redis, one behaviour) and the engine's stay-or-switch decision over the engine test catalog."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from routing.catalog import catalog_snapshot_reset
from routing.complexity import RequestFeatures
from routing.engine import RouteRequest, route
from routing.health import HealthConfig, LocalHealth
from routing.models import ModelPrice
from routing.policies import PolicySpec, policy_merge
from routing.stickiness import (
    MIN_CACHED_TOKENS,
    CacheHolder,
    LocalCacheMap,
    RedisCacheMap,
    conversation_key,
    recall,
    remember,
)
from tests.routing.engine_catalog import M, build_catalog

QUESTION = "What is the derivative of x^3 sin x?"  # tier 2 for the bundled estimator
# An earlier answer long enough (about 2,200 tokens, characters / 4) for a prompt cache.
ANSWER = (
    "The derivative of a product is the first times the derivative of the second plus the "
    "second times the derivative of the first. "
) * 70


def test_the_identity_is_a_keyed_hash_of_the_start_or_the_callers_key():
    start = ["You are a tutor.", "What is the derivative of x^3 sin x?"]
    key = conversation_key(7, start, None)
    assert len(key) == 32 and key == conversation_key(7, start, None)
    assert "tutor" not in key and "derivative" not in key
    assert key != conversation_key(8, start, None)  # per organization
    assert key != conversation_key(7, [*start[:1], "Another question"], None)
    by_caller = conversation_key(7, start, "session-42")
    assert by_caller == conversation_key(7, ["anything else"], "session-42")
    assert by_caller != key


def test_the_local_map_expires_and_stays_bounded():
    holder = CacheHolder("alpha/a-mid", 3, 2000)
    local = LocalCacheMap(max_entries=2)
    local.put_now("a", holder, 60)
    local.put_now("gone", holder, 0)  # expires at once
    assert local.get_now("a") == holder and local.get_now("gone") is None
    local.put_now("b", holder, 60)
    local.put_now("c", holder, 60)
    assert local.get_now("a") is None  # the oldest write made room
    assert CacheHolder.decode(holder.encode()) == holder
    assert CacheHolder.decode(b"garbage") is None


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="REDIS_URL is not set (embedded mode)")
def test_the_redis_map_is_shared_and_expires_with_the_provider_cache():
    import redis

    url = os.environ["REDIS_URL"]
    shared = RedisCacheMap(url, prefix="mr:test:conv")
    other = RedisCacheMap(url, prefix="mr:test:conv")  # another gateway process
    holder = CacheHolder("alpha/a-mid", 3, 2000)

    async def scenario():
        await shared.put("k", holder, 300)
        return await other.get("k"), await other.get("missing")

    try:
        assert asyncio.run(scenario()) == (holder, None)
        ttl = redis.Redis.from_url(url).pttl("mr:test:conv:k")
        assert 299_000 < ttl <= 300_000
    finally:
        shared.clear()


def test_remember_keeps_only_what_a_provider_would_cache(settings):
    from routing.stickiness import cache_map_set

    cache_map_set(LocalCacheMap())
    try:

        async def scenario():
            common = {"model_id": "alpha/a-mid", "deployment_id": 3, "kind": "openai"}
            await remember("short", prompt_tokens=MIN_CACHED_TOKENS - 1, caches=True, **common)
            await remember("nocache", prompt_tokens=5000, caches=False, **common)
            await remember("kept", prompt_tokens=5000, caches=True, **common)
            marked = {**common, "kind": "anthropic"}  # caches only cache_control prefixes
            await remember("marked", prompt_tokens=5000, caches=True, **marked)
            return [await recall(k) for k in ("short", "nocache", "kept", "marked", None)]

        kept = CacheHolder("alpha/a-mid", 3, 5000)
        assert asyncio.run(scenario()) == [None, None, kept, None, None]
        settings.MEGAROUTER_CACHE_AWARE_ROUTING = False
        assert asyncio.run(recall("kept")) is None  # switched off: never read
    finally:
        cache_map_set(None)


@pytest.fixture
def catalog(db):
    deployments = build_catalog()
    earlier = timezone.now() - timedelta(minutes=1)
    for deployment, price_in, price_out, cached in (
        ("a-small-eu", "0.1", "0.2", "0.01"),
        ("a-mid-us", "1", "2", "0.1"),
        ("a-large-us", "10", "30", "1"),
    ):
        ModelPrice.objects.create(
            model=deployments[deployment].model,
            effective_from=earlier,
            input_per_token=Decimal(price_in) * M,
            output_per_token=Decimal(price_out) * M,
            cached_input_per_token=Decimal(cached) * M,
        )
    catalog_snapshot_reset()
    yield deployments
    catalog_snapshot_reset()


def decide(catalog, holder, strategy="cost", **policy_fields):
    features = RequestFeatures.from_messages(
        [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER},
            {"role": "user", "content": QUESTION},
        ]
    )
    policy = policy_merge([("organization", PolicySpec(strategy=strategy, **policy_fields))])
    request = RouteRequest(features=features, conversation="c", cache=holder)
    return route(request=request, policy=policy, store=LocalHealth(HealthConfig()))


def test_a_conversation_stays_where_its_cache_is_while_that_is_cheaper(catalog):
    plain = decide(catalog, None)
    assert plain.estimate.tier == 2
    assert plain.candidates[0].deployment == "b-mid-eu"  # the cheapest cold
    assert "prompt_cache" not in plain.explain
    # a-mid with 2,000 cached tokens at $0.1/M costs less than b-mid cold at $0.8/M; the
    # deployment that holds the cache comes first, even a-mid-eu (priority 1)
    for deployment in ("a-mid-us", "a-mid-eu"):
        holder = CacheHolder("alpha/a-mid", catalog[deployment].pk, 2000)
        stay = decide(catalog, holder)
        assert stay.candidates[0].deployment == deployment
        note = stay.explain["prompt_cache"]
        assert note["kept"] is True and note["cache_lost_usd"] == "0.00000000"
        assert note["cached_tokens_estimate"] == 2000
        assert Decimal(note["stay_usd"]) < Decimal(note["switch_usd"])
        assert {c.deployment for c in stay.candidates} >= {"a-mid-us", "a-mid-eu", "b-mid-eu"}
    a_mid = next(c for c in stay.candidates if c.deployment == "a-mid-us")
    assert a_mid.price.cached_input_per_token == Decimal("0.1") * M


def test_it_switches_when_staying_costs_more_or_no_longer_fits(catalog):
    large = decide(catalog, CacheHolder("alpha/a-large", catalog["a-large-us"].pk, 2000))
    note = large.explain["prompt_cache"]
    assert large.candidates[0].deployment == "b-mid-eu"
    assert (note["kept"], note["why"]) == (False, "switching is cheaper")
    # the cached-input discount given up: 2,000 tokens x ($10 - $1) per million
    assert note["cache_lost_usd"] == "0.01800000"
    uncached = decide(catalog, CacheHolder("beta/b-large", catalog["b-large-us"].pk, 2000))
    assert uncached.explain["prompt_cache"]["why"] == "nothing cached to stay for"  # no price
    blocked = decide(
        catalog,
        CacheHolder("alpha/a-mid", catalog["a-mid-us"].pk, 2000),
        blocked_providers=("alpha",),
    )
    assert blocked.explain["prompt_cache"]["kept"] is False
    assert blocked.explain["prompt_cache"]["why"].startswith("the deployment holding the cache")
    short = decide(catalog, CacheHolder("alpha/a-mid", catalog["a-mid-us"].pk, 900))
    assert short.explain["prompt_cache"]["why"] == "nothing cached to stay for"
    assert short.candidates[0].deployment == "b-mid-eu"


def test_it_does_not_move_a_conversation_below_the_tier_the_turn_needs(catalog):
    small = decide(catalog, CacheHolder("alpha/a-small", catalog["a-small-eu"].pk, 2000))
    note = small.explain["prompt_cache"]
    assert (note["kept"], note["why"]) == (False, "below the tier this turn needs (2)")
    assert small.candidates[0].deployment == "b-mid-eu"

    # the strategy's own pick (balanced at cost_quality 0: the cheapest, tier 1) stays, and the
    # deployment holding the cache goes first: nothing is given up
    cheapest = decide(
        catalog,
        CacheHolder("alpha/a-small", catalog["a-small-eu"].pk, 2000),
        strategy="balanced",
        cost_quality=Decimal(0),
    )
    assert cheapest.candidates[0].deployment == "a-small-eu"
    assert cheapest.explain["prompt_cache"]["kept"] is True
