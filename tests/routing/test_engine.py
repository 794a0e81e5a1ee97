"""The routing engine over a real catalog snapshot: hard filters, each strategy, named models
and fallbacks, provider diversity, breaker-aware ordering and the explanation."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import time_machine

from routing.breaker import breaker_allow
from routing.catalog import catalog_snapshot
from routing.complexity import RequestFeatures
from routing.engine import (
    NoRoute,
    RouteRequest,
    engine_cache_reset,
    reference_model_for,
    route,
)
from routing.health import HealthConfig, LocalHealth
from routing.policies import EffectivePolicy, PolicySpec, policy_merge
from tests.routing.engine_catalog import build_catalog

pytestmark = pytest.mark.django_db

EASY = "What is the derivative of x^3 sin x?"  # the bundled estimator puts it at tier 2
HARD = "Prove that for every positive integer n, the number n^5 - n is divisible by 30."


@pytest.fixture
def catalog():
    return build_catalog()


@pytest.fixture
def store():
    return LocalHealth(HealthConfig(alpha=1.0))


def req(text=EASY, *, model="auto", tools=None, response_format=None, images=False, **kw):
    content = text
    if images:
        content = [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]
    features = RequestFeatures.from_messages(
        [{"role": "user", "content": content}], tools=tools, response_format=response_format
    )
    return RouteRequest(features=features, model=model, **kw)


def policy(**fields) -> EffectivePolicy:
    return policy_merge([("organization", PolicySpec(**fields))])


def names(decision) -> list[str]:
    return [c.deployment for c in decision.candidates]


def test_cost_first_is_the_cheapest_model_of_the_needed_tier(catalog, store):
    decision = route(request=req(), policy=policy(strategy="cost"), store=store)
    assert decision.strategy == "cost"
    assert decision.estimate.tier == 2
    # tier >= 2 by expected cost: b-mid, a-mid (two deployments, by priority), b-large
    assert names(decision) == ["b-mid-eu", "a-mid-us", "a-mid-eu", "b-large-us"]
    assert decision.explain["reason"] == "cheapest expected cost at quality tier >= 2"
    first = decision.candidates[0]
    assert (first.model_id, first.provider, first.context_window) == ("beta/b-mid", "beta", 8000)
    assert first.input_per_token == Decimal("0.0000008")


def test_auto_leaves_out_a_model_past_its_deprecation_date_a_named_request_still_gets_it(
    catalog, store
):
    from routing.catalog import catalog_snapshot_reset
    from routing.models import Model

    # b-mid, the cheapest tier-2 model, reaches its deprecation date on 2027-03-01.
    Model.objects.filter(canonical_id="beta/b-mid").update(deprecation_date=date(2027, 3, 1))
    catalog_snapshot_reset()
    with time_machine.travel(datetime(2027, 2, 28, 23, 59, tzinfo=UTC), tick=False):
        before = route(request=req(), policy=policy(strategy="cost"), store=store)
    with time_machine.travel(datetime(2027, 3, 1, 0, 1, tzinfo=UTC), tick=False):
        after = route(request=req(), policy=policy(strategy="cost"), store=store)
        named = route(request=req(model="beta/b-mid"), policy=policy(), store=store)
    assert names(before)[0] == "b-mid-eu"
    assert names(after) == ["a-mid-us", "a-mid-eu", "b-large-us", "a-large-us"]
    assert after.explain["rejected"]["deprecated"] == 1
    assert names(named) == ["b-mid-eu"]


def test_auto_leaves_out_text_completion_models_a_named_request_still_gets_them(catalog, store):
    from routing.catalog import catalog_snapshot_reset
    from routing.models import Model

    # b-mid, the cheapest tier-2 model, becomes a base text-completion model
    Model.objects.filter(canonical_id="beta/b-mid").update(mode="completion")
    catalog_snapshot_reset()
    chosen = route(request=req(), policy=policy(strategy="cost"), store=store)
    assert names(chosen) == ["a-mid-us", "a-mid-eu", "b-large-us", "a-large-us"]
    assert chosen.explain["rejected"]["mode"] == 1
    named = route(request=req(model="beta/b-mid"), policy=policy(), store=store)
    assert names(named) == ["b-mid-eu"]


def test_auto_alias_names_the_strategy(catalog, store):
    decision = route(request=req(model="auto:cost"), policy=policy(), store=store)
    assert decision.strategy == "cost"
    with pytest.raises(NoRoute) as caught:
        route(request=req(model="auto:cheapest"), policy=policy(), store=store)
    assert caught.value.code == "model_not_found"


def test_quality_floor_is_a_hard_filter(catalog, store):
    decision = route(request=req(), policy=policy(strategy="cost", quality_floor=3), store=store)
    assert names(decision) == ["b-large-us", "a-large-us"]
    assert decision.explain["rejected"] == {"quality_floor": 3}


def test_capabilities_filter(catalog, store):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    decision = route(request=req(tools=tools), policy=policy(strategy="cost"), store=store)
    assert [c.model_id for c in decision.candidates] == [
        "alpha/a-mid",
        "alpha/a-mid",
        "beta/b-large",
        "alpha/a-large",
    ]
    assert decision.explain["rejected"] == {"capability": 1}
    vision = route(request=req(images=True), policy=policy(strategy="cost"), store=store)
    assert {c.model_id for c in vision.candidates} == {"alpha/a-mid", "alpha/a-large"}
    schema = route(
        request=req(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
        policy=policy(strategy="cost"),
        store=store,
    )
    assert [c.model_id for c in schema.candidates] == ["beta/b-large", "alpha/a-large"]


def test_context_window_must_fit_prompt_and_max_output(catalog, store):
    decision = route(
        request=req(max_output_tokens=10_000), policy=policy(strategy="cost"), store=store
    )
    assert "beta/b-mid" not in {c.model_id for c in decision.candidates}  # 8k window
    assert decision.explain["rejected"] == {"context_window": 1}
    too_big = route(
        request=req(max_output_tokens=150_000), policy=policy(strategy="cost"), store=store
    )
    assert [c.model_id for c in too_big.candidates] == ["alpha/a-large"]


def test_price_cap_per_million_applies_to_input_and_output(catalog, store):
    decision = route(
        request=req(),
        policy=policy(strategy="cost", max_price_per_million=Decimal("2")),
        store=store,
    )
    assert {c.model_id for c in decision.candidates} == {
        "beta/b-mid",
        "alpha/a-mid",
        "alpha/a-small",
    }
    assert decision.explain["rejected"] == {"price_cap": 2}


def test_max_cost_per_request_uses_the_worst_case(catalog, store):
    # 9 input tokens + 1000 output: a-large costs 9 * 10e-6 + 1000 * 30e-6 = 0.03009
    decision = route(
        request=req(max_output_tokens=1000),
        policy=policy(strategy="cost", max_cost_per_request_usd=Decimal("0.03")),
        store=store,
    )
    assert "alpha/a-large" not in {c.model_id for c in decision.candidates}
    assert decision.explain["rejected"] == {"max_cost": 1}


def test_region_zdr_and_provider_filters_act_on_deployments(catalog, store):
    eu = route(
        request=req(), policy=policy(strategy="cost", allowed_regions=("eu-west-1",)), store=store
    )
    assert names(eu) == ["b-mid-eu", "a-mid-eu", "a-small-eu"]
    zdr = route(
        request=req(), policy=policy(strategy="cost", zero_data_retention_only=True), store=store
    )
    assert {c.provider for c in zdr.candidates} == {"beta"}
    blocked = route(
        request=req(), policy=policy(strategy="cost", blocked_providers=("beta",)), store=store
    )
    assert {c.provider for c in blocked.candidates} == {"alpha"}


def test_allowed_and_blocked_model_patterns(catalog, store):
    decision = route(
        request=req(),
        policy=policy(
            strategy="cost", allowed_models=("alpha/*",), blocked_models=("alpha/a-mid",)
        ),
        store=store,
    )
    assert [c.model_id for c in decision.candidates] == ["alpha/a-large", "alpha/a-small"]


def test_nothing_fits(catalog, store):
    with pytest.raises(NoRoute) as caught:
        route(request=req(), policy=policy(allowed_models=("gamma/*",)), store=store)
    assert caught.value.code == "no_eligible_model"
    assert caught.value.explain["rejected"] == {"policy_model": 5}


def test_named_model_then_policy_fallbacks(catalog, store):
    decision = route(
        request=req(model="a-mid"),
        policy=policy(fallbacks=("beta/b-large", "alpha/a-mid", "nope/unknown")),
        store=store,
    )
    assert decision.strategy == "fixed"
    assert names(decision) == ["a-mid-us", "a-mid-eu", "b-large-us"]
    assert decision.explain["rejected"] == {"fallback_unknown": 1}


def test_named_model_outside_the_policy_is_refused(catalog, store):
    with pytest.raises(NoRoute) as caught:
        route(request=req(model="alpha/a-large"), policy=policy(blocked_models=("*large*",)))
    assert caught.value.code == "model_not_allowed"
    with pytest.raises(NoRoute) as caught:
        route(request=req(model="nope"), policy=policy())
    assert caught.value.code == "model_not_found"


def test_latency_first_uses_live_stats(catalog, store):
    d = catalog
    store.record(d["a-small-eu"].pk, ok=True, latency_ms=900.0)
    store.record(d["b-mid-eu"].pk, ok=True, latency_ms=120.0)
    store.record(d["a-mid-us"].pk, ok=True, latency_ms=80.0)
    store.record(d["a-mid-eu"].pk, ok=True, latency_ms=400.0)
    store.record(d["b-large-us"].pk, ok=True, latency_ms=300.0)
    store.record(d["a-large-us"].pk, ok=True, latency_ms=2000.0)
    decision = route(request=req(), policy=policy(strategy="latency"), store=store)
    assert names(decision) == ["a-mid-us", "a-mid-eu", "b-mid-eu", "b-large-us"]
    # a flaky fast deployment loses to a reliable slower one: 80 ms at 100 % errors = 400 ms
    store.record(d["a-mid-us"].pk, ok=False, latency_ms=80.0)
    again = route(request=req(), policy=policy(strategy="latency"), store=store)
    assert names(again)[0] == "a-mid-us"  # the ranking is reused for RANK_TTL (0.25 s)
    engine_cache_reset()
    decision = route(request=req(), policy=policy(strategy="latency"), store=store)
    assert names(decision)[0] == "b-mid-eu"


def test_latency_and_availability_stay_at_the_estimated_tier_per_request(catalog, store):
    d = catalog
    store.record(d["a-small-eu"].pk, ok=True, latency_ms=20.0)  # the fastest is tier 1
    for name in ("b-mid-eu", "a-mid-us", "a-mid-eu", "b-large-us", "a-large-us"):
        store.record(d[name].pk, ok=True, latency_ms=300.0)
    for strategy in ("latency", "availability"):
        engine_cache_reset()
        easy = route(request=req("Say something"), policy=policy(strategy=strategy), store=store)
        assert easy.estimate.tier == 1
        if strategy == "latency":
            assert easy.candidates[0].deployment == "a-small-eu"
        # the ranking is reused for RANK_TTL, but per estimated tier: a hard request right
        # after an easy one does not get the easy one's tier-1-first order
        hard = route(request=req(HARD), policy=policy(strategy=strategy), store=store)
        assert hard.estimate.tier == 4
        assert hard.candidates[0].model.quality_tier == 4, strategy
        assert "a-small-eu" not in names(hard)[:2]
        for decision in (easy, hard):
            assert f"tier >= {decision.estimate.tier}" in decision.explain["reason"]


def test_max_latency_drops_slow_deployments(catalog, store):
    store.record(catalog["b-mid-eu"].pk, ok=True, latency_ms=5000.0)
    decision = route(
        request=req(), policy=policy(strategy="cost", max_latency_ms=1000), store=store
    )
    assert "b-mid-eu" not in names(decision)
    assert decision.explain["rejected"] == {"max_latency": 1}


def test_open_breakers_go_last(catalog, store):
    store.config = HealthConfig(failures_to_open=1, cooldown_s=60)
    store.record(catalog["b-mid-eu"].pk, ok=False)
    decision = route(request=req(), policy=policy(strategy="cost"), store=store)
    assert names(decision) == ["a-mid-us", "a-mid-eu", "b-large-us", "b-mid-eu"]


def test_an_open_breaker_past_its_cool_down_takes_its_place_for_the_trial(catalog, store):
    """Prompt recovery: once the cool-down is over, the deployment is back in its place, so
    the next request makes the half-open trial (claimed by one caller only) instead of waiting
    for the background probe; a successful trial closes the breaker."""
    store.config = HealthConfig(failures_to_open=1, cooldown_s=0.2)
    order = names(route(request=req(), policy=policy(strategy="cost"), store=store))
    assert order[0] == "b-mid-eu"  # the cheapest: the primary
    primary = catalog["b-mid-eu"].pk
    store.record(primary, ok=False)
    cooling_order = [*order[1:], "b-mid-eu"]
    assert names(route(request=req(), policy=policy(strategy="cost"), store=store)) == (
        cooling_order
    )
    assert not breaker_allow(primary, store=store)
    time.sleep(0.25)
    assert names(route(request=req(), policy=policy(strategy="cost"), store=store)) == order
    assert breaker_allow(primary, store=store)  # this request's trial
    assert not breaker_allow(primary, store=store)  # one at a time
    # while the trial is in flight, other requests see it cooling and order it last again
    assert names(route(request=req(), policy=policy(strategy="cost"), store=store)) == (
        cooling_order
    )
    store.record(primary, ok=True, latency_ms=50.0, urgent=True)
    assert names(route(request=req(), policy=policy(strategy="cost"), store=store)) == order
    assert breaker_allow(primary, store=store)


def test_availability_interleaves_providers(catalog, store):
    for _ in range(5):
        store.record(catalog["a-mid-us"].pk, ok=True, latency_ms=100.0)
    store.record(catalog["b-large-us"].pk, ok=False)
    decision = route(request=req(), policy=policy(strategy="availability"), store=store)
    providers = [c.provider for c in decision.candidates]
    assert decision.candidates[0].deployment == "a-mid-us"  # most samples, no errors
    assert providers[:2] == ["alpha", "beta"]  # the first backup is on another provider


def test_balanced_prefers_value_and_is_deterministic(catalog, store):
    first = route(request=req(), policy=policy(), store=store)
    again = route(request=req(), policy=policy(), store=store)
    assert first.strategy == "balanced"
    assert names(first) == names(again)
    assert len({c.model_id for c in first.candidates}) >= 3
    assert first.explain["reason"] == (
        "predicted quality vs expected cost relative to the most expensive candidate's at "
        "cost_quality 0.5, live latency and errors"
    )  # this catalog has no price for the default reference model
    assert first.explain["quality"] == "tier through the trained strong/weak heads"


def test_balanced_trades_by_the_policys_cost_quality_against_the_reference_model(catalog, store):
    def first(text, **fields):
        decision = route(
            request=req(text),
            policy=policy(reference_model="alpha/a-large", **fields),
            store=store,
        )
        return decision.candidates[0].model_id, decision.explain

    # 0: cheapest; 1: the best predicted quality (the frontier model on a hard proof)
    assert first(HARD, cost_quality=Decimal(0))[0] == "alpha/a-small"
    assert first(HARD, cost_quality=Decimal(1))[0] == "alpha/a-large"
    # the default 0.5 on a greeting, where the heads predict every tier answers as well: the
    # cheapest, 100x below the reference model's price; on the proof, a stronger tier
    greeting, explain = first("hi there!")
    assert greeting == "alpha/a-small"
    assert explain["reason"] == (
        "predicted quality vs expected cost relative to alpha/a-large's at cost_quality 0.5, "
        "live latency and errors"
    )
    assert explain["reference_model"] == "alpha/a-large"
    hard, _ = first(HARD)
    assert hard != "alpha/a-small"
    # the request level sets it too, nearest wins
    override = policy_merge(
        [
            ("organization", PolicySpec(cost_quality=Decimal(0), reference_model="alpha/a-large")),
            ("request", PolicySpec(cost_quality=Decimal(1))),
        ]
    )
    decision = route(request=req(HARD), policy=override, store=store)
    assert decision.candidates[0].model_id == "alpha/a-large"
    assert decision.explain["policy"]["cost_quality"] == "1"


def test_preferred_models_go_first(catalog, store):
    key_level = PolicySpec(preferred_models=("alpha/a-large",))
    decision = route(
        request=req(),
        policy=policy_merge([("org", PolicySpec(strategy="cost")), ("key", key_level)]),
        store=store,
    )
    assert decision.candidates[0].model_id == "alpha/a-large"


def test_diversity_adds_another_provider(catalog, store):
    decision = route(
        request=req(),
        policy=policy(strategy="cost", blocked_models=("beta/b-mid", "beta/b-large")),
        store=store,
    )
    assert {c.provider for c in decision.candidates} == {"alpha"}  # nothing else exists
    decision = route(
        request=req(),
        policy=policy(strategy="cost", quality_floor=2, blocked_models=("beta/b-mid",)),
        store=store,
    )
    assert [c.model_id for c in decision.candidates] == [
        "alpha/a-mid",
        "alpha/a-mid",
        "beta/b-large",
        "alpha/a-large",
    ]


def test_explanation_is_small_metadata(catalog, store):
    decision = route(
        request=req(),
        policy=policy(strategy="cost", reference_model="alpha/a-large"),
        store=store,
    )
    explain = decision.explain
    assert explain["strategy"] == "cost"
    assert explain["tier"] == 2
    assert explain["considered"] == 5
    assert explain["candidates"][0] == {
        "model": "beta/b-mid",
        "deployment": "b-mid-eu",
        "provider": "beta",
    }
    # 9 input and 250 (guessed) output tokens
    assert explain["estimated_cost_usd"] == "0.00040720"  # 9 * 0.8e-6 + 250 * 1.6e-6
    assert explain["reference_model"] == "alpha/a-large"
    assert explain["reference_cost_usd"] == "0.00759000"  # 9 * 10e-6 + 250 * 30e-6
    assert decision.reference_model == "alpha/a-large"
    assert "reference_model_note" not in explain
    assert EASY not in str(explain)


def test_a_conversation_is_routed_on_what_it_asked_before(catalog, store):
    follow_up = "Thanks! And the next step?"
    messages = [
        {"role": "user", "content": HARD},
        {"role": "assistant", "content": None, "tool_calls": 1},
        {"role": "tool", "content": "n(n-1)(n+1)(n^2+1)"},
        {"role": "user", "content": follow_up},
    ]
    conversation = RouteRequest(features=RequestFeatures.from_messages(messages))
    alone = route(request=req(follow_up), policy=policy(strategy="cost"), store=store)
    after = route(request=conversation, policy=policy(strategy="cost"), store=store)
    assert alone.estimate.tier == 1 and alone.candidates[0].model.quality_tier == 1
    assert after.estimate.tier >= 3
    assert after.candidates[0].model.quality_tier >= after.estimate.tier
    assert after.explain["conversation"] == {
        "user_turns": 2,
        "tool_calls": 1,
        "tool_results": 1,
        "earlier_turns_read": True,
    }
    assert "conversation" not in alone.explain
    assert HARD not in str(after.explain) and follow_up not in str(after.explain)


def test_reference_model_resolves_in_the_catalog_else_the_default(catalog, store, settings):
    settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL = "alpha/a-mid"
    snapshot = catalog_snapshot(max_age=0)
    assert reference_model_for(policy(), snapshot) == ("alpha/a-mid", None)
    # a bare provider model name is resolved to its canonical id
    assert reference_model_for(policy(reference_model="a-large"), snapshot) == (
        "alpha/a-large",
        None,
    )
    # a model the catalog does not know (policies are not checked against it): the default,
    # and the explanation says why
    decision = route(request=req(), policy=policy(reference_model="nobody/gone"), store=store)
    assert decision.reference_model == "alpha/a-mid"
    assert decision.explain["reference_model"] == "alpha/a-mid"
    assert decision.explain["reference_model_note"] == (
        "unknown model 'nobody/gone'; savings are measured against the default 'alpha/a-mid'"
    )
    # a default the catalog does not know either is kept as is (no price: no savings)
    settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL = "nobody/default"
    decision = route(request=req(), policy=policy(), store=store)
    assert decision.reference_model == "nobody/default"
    assert "reference_cost_usd" not in decision.explain


@pytest.mark.django_db(transaction=True)
async def test_async_route_for_a_key_uses_every_policy_level(store):
    from asgiref.sync import sync_to_async

    from orgs.keys import key_context_for_sync
    from orgs.models import Role
    from routing.catalog import catalog_snapshot
    from routing.engine import route_call
    from routing.policies import (
        PolicySpec,
        policy_table,
        policy_table_reset,
        routing_policy_set,
    )
    from tests.orgs.factories import SYSTEM, add_member, make_key, make_tree

    policy_table_reset()

    def setup():
        build_catalog()
        tree = make_tree("acme")
        routing_policy_set(actor=SYSTEM, node=tree.root, data={"zero_data_retention_only": True})
        member = add_member(tree.project, Role.DEVELOPER)
        created = make_key(tree.project, member, routing_policy={"strategy": "cost"})
        key = key_context_for_sync(created.raw_key)
        catalog_snapshot(max_age=0)
        policy_table(max_age=0)
        return key

    def close():
        from django.db import connection

        connection.close()

    try:
        key = await sync_to_async(setup)()
        decision = await route_call(request=req(), key=key, store=store)
        policy = decision.policy
    finally:
        await sync_to_async(close)()  # the worker thread's connection
    assert policy.levels == ("organization", "key")
    assert decision.strategy == "cost"
    assert names(decision) == ["b-mid-eu", "b-large-us"]  # beta is the only ZDR provider
    decision = await route_call(
        request=req(), key=key, override=PolicySpec(strategy="latency"), store=store
    )
    assert decision.strategy == "latency"
