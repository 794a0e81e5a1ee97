from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from gateway.providers.types import Usage
from routing.catalog import catalog_snapshot, catalog_snapshot_reset
from routing.models import ModelPrice
from routing.pricing import usage_cost, worst_case_over
from routing.selectors import price_at
from routing.tokens import PromptCounts, prompt_tokens_estimate
from tests.billing.factories import Price
from tests.routing.factories import T0, ModelFactory

D = Decimal


def test_cost_is_tokens_times_list_price():
    price = Price(D("0.0000025"), D("0.00001"))
    assert usage_cost(price, Usage(prompt_tokens=1000, completion_tokens=500)) == D(
        "0.007500000000"
    )


def test_cached_tokens_use_the_cached_price_and_cache_writes_theirs():
    price = Price(
        D("0.000003"),
        D("0.000015"),
        cached_input_per_token=D("0.0000003"),
        cache_write_per_token=D("0.00000375"),
    )
    usage = Usage(
        prompt_tokens=10_000, completion_tokens=100, cached_tokens=8_000, cache_write_tokens=1_000
    )
    # 1,000 fresh * 3e-6 + 8,000 cached * 3e-7 + 1,000 written * 3.75e-6 + 100 out * 1.5e-5
    assert usage_cost(price, usage) == D("0.003") + D("0.0024") + D("0.00375") + D("0.0015")


def test_cached_tokens_without_a_cached_price_cost_the_input_price():
    price = Price(D("0.000001"), D("0.000002"))
    assert usage_cost(price, Usage(prompt_tokens=100, completion_tokens=0, cached_tokens=60)) == D(
        "0.0001"
    )


def test_reasoning_tokens_at_their_own_price_when_billed_apart():
    price = Price(D("0.000001"), D("0.000002"), reasoning_per_token=D("0.000004"))
    usage = Usage(prompt_tokens=10, completion_tokens=100, reasoning_tokens=40)
    assert usage_cost(price, usage) == D("0.00001") + D("0.00012") + D("0.00016")


def test_fractions_of_a_cent_are_kept_to_twelve_places_and_rounded_up():
    price = Price(D("0.000000075"), D("0.0000003"))
    assert usage_cost(price, Usage(prompt_tokens=1, completion_tokens=0)) == D("0.000000075000")
    odd = Price(D("0.0000000000001"), D("0"))
    assert usage_cost(odd, Usage(prompt_tokens=3, completion_tokens=0)) == D("0.000000000001")


def test_worst_case_takes_the_most_expensive_candidate():
    cheap = Price(D("0.000001"), D("0.000002"))
    dear = Price(D("0.000003"), D("0.000015"))
    assert worst_case_over([cheap, dear], input_tokens=1000, output_tokens=200) == (
        D("0.003") + D("0.003")
    )
    assert worst_case_over([], input_tokens=10, output_tokens=10) == D(0)
    assert worst_case_over([None, cheap], input_tokens=1000, output_tokens=0) == D("0.001")


def test_worst_case_takes_the_dearer_of_input_and_cache_write_and_of_output_and_reasoning():
    price = Price(
        D("0.000001"),
        D("0.000002"),
        cache_write_per_token=D("0.00000125"),
        reasoning_per_token=D("0.000003"),
    )
    assert worst_case_over([price], input_tokens=1000, output_tokens=100) == (
        D("0.00125") + D("0.0003")
    )


def test_prompt_estimate_is_characters_over_four_plus_framing_and_images():
    counts = PromptCounts(chars=301, messages=2, images=1, images_low=1)
    assert prompt_tokens_estimate(counts) == 76 + 2 * 4 + 3 + 1105 + 85
    assert prompt_tokens_estimate(PromptCounts(chars=5, token_ids=4, framed=False)) == 2 + 4


@pytest.mark.django_db
def test_charged_at_the_catalog_version_in_force():
    model = ModelFactory(price=(D("0.000001"), D("0.000002")))
    ModelPrice.objects.create(
        model=model,
        effective_from=T0 + timedelta(days=10),
        input_per_token=D("0.000002"),
        output_per_token=D("0.000004"),
    )
    before = price_at(model.pk, T0 + timedelta(days=1))
    after = price_at(model.pk, T0 + timedelta(days=11))
    usage = Usage(prompt_tokens=1000, completion_tokens=1000)
    assert usage_cost(before, usage) == D("0.003")
    assert usage_cost(after, usage) == D("0.006")
    catalog_snapshot_reset()
    snap_price = catalog_snapshot(max_age=0).price_at(model.canonical_id, T0 + timedelta(days=11))
    assert snap_price.id == after.pk
    assert usage_cost(snap_price, usage) == D("0.006")
