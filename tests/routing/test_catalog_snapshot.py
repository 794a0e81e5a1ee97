from __future__ import annotations

import asyncio
from dataclasses import FrozenInstanceError
from datetime import timedelta
from decimal import Decimal

import pytest

from routing.catalog import (
    AmbiguousModel,
    UnknownModel,
    acatalog_snapshot,
    catalog_snapshot,
    catalog_snapshot_build,
)
from routing.crypto import CredentialSecret
from routing.models import Provider
from routing.services import (
    PriceInput,
    credential_upsert,
    deployment_upsert,
    model_override,
    model_price_set,
)
from tests.routing.factories import T0, DeploymentFactory, ModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def _catalog(models: int) -> None:
    openai = ProviderFactory(slug="openai")
    for n in range(models):
        model = ModelFactory(provider=openai, provider_model_name=f"m{n}")
        DeploymentFactory(model=model, name=f"d{n}")


@pytest.mark.parametrize("size", [2, 20])
def test_build_is_a_constant_number_of_queries(size, django_assert_num_queries):
    _catalog(size)
    with django_assert_num_queries(6):
        snapshot = catalog_snapshot_build()
    assert len(snapshot.models) == size
    assert sum(len(d) for d in snapshot.deployments.values()) == size


def test_resolve_canonical_and_bare_names():
    openai = ProviderFactory(slug="openai")
    azure = ProviderFactory(slug="azure", kind="azure")
    deepseek = ProviderFactory(slug="deepseek")
    dashscope = ProviderFactory(slug="dashscope")
    fireworks = ProviderFactory(slug="fireworks_ai")
    together = ProviderFactory(slug="together_ai")
    ModelFactory(provider=openai, provider_model_name="gpt-5", family="gpt-5")
    ModelFactory(provider=azure, provider_model_name="gpt-5", family="gpt-5")
    ModelFactory(provider=deepseek, provider_model_name="deepseek-v4", family="deepseek")
    ModelFactory(provider=dashscope, provider_model_name="deepseek-v4", family="deepseek")
    ModelFactory(provider=fireworks, provider_model_name="llama-4", family="llama")
    ModelFactory(provider=together, provider_model_name="llama-4", family="llama")
    ModelFactory(provider=fireworks, provider_model_name="only-here", family="x")
    snapshot = catalog_snapshot()
    assert snapshot.resolve("openai/gpt-5").canonical_id == "openai/gpt-5"
    assert snapshot.resolve("azure/gpt-5").canonical_id == "azure/gpt-5"
    assert snapshot.resolve("gpt-5").canonical_id == "openai/gpt-5"
    assert snapshot.resolve("deepseek-v4").canonical_id == "deepseek/deepseek-v4"
    assert snapshot.resolve("only-here").canonical_id == "fireworks_ai/only-here"
    with pytest.raises(AmbiguousModel) as raised:
        snapshot.resolve("llama-4")
    assert raised.value.candidates == ("fireworks_ai/llama-4", "together_ai/llama-4")
    assert str(raised.value) == (
        "model name 'llama-4' is ambiguous: use one of fireworks_ai/llama-4, together_ai/llama-4"
    )
    with pytest.raises(UnknownModel, match="unknown model 'gpt-6'"):
        snapshot.resolve("gpt-6")


def test_snapshot_is_immutable():
    _catalog(1)
    snapshot = catalog_snapshot()
    model = snapshot.models["openai/m0"]
    with pytest.raises(FrozenInstanceError):
        model.quality_tier = 4
    with pytest.raises(TypeError):
        snapshot.models["x"] = model
    with pytest.raises(TypeError):
        snapshot.aliases["x"] = "y"
    assert isinstance(snapshot.deployments["openai/m0"], tuple)


def test_prices_in_the_snapshot_follow_versions():
    model = ModelFactory(price=(Decimal("0.000001"), Decimal("0.000002")))
    later = T0 + timedelta(days=5)
    model_price_set(
        model=model,
        price=PriceInput(input_per_token=Decimal("0.000003"), output_per_token=Decimal("0.000004")),
        effective_from=later,
    )
    snapshot = catalog_snapshot()
    assert snapshot.price_at(model.canonical_id, T0 - timedelta(seconds=1)) is None
    assert snapshot.price_at(model.canonical_id, T0).input_per_token == Decimal("0.000001")
    assert snapshot.price_at(model.canonical_id, later).input_per_token == Decimal("0.000003")
    assert snapshot.current_price(model.canonical_id).output_per_token == Decimal("0.000004")


def test_deployments_carry_what_an_adapter_needs_and_skip_disabled_ones():
    provider = ProviderFactory(slug="deepseek", base_url="https://api.deepseek.com/v1/")
    model = ModelFactory(provider=provider, provider_model_name="deepseek-chat")
    credential, _ = credential_upsert(
        name="ds", kind="api_key", secret=CredentialSecret(api_key="sk-ds")
    )
    deployment_upsert(
        name="primary", model=model, credential=credential, priority=0, weight=3, rpm_limit=60
    )
    deployment_upsert(
        name="backup",
        model=model,
        base_url="http://127.0.0.1:9100/openai/v1",
        priority=1,
        headers={"X-Team": "a"},
    )
    deployment_upsert(name="off", model=model, enabled=False)
    other = ProviderFactory(slug="down", enabled=False)
    deployment_upsert(name="provider-off", model=model, provider=other)

    snapshot = catalog_snapshot()
    primary, backup = snapshot.deployments_for("deepseek-chat")
    assert (primary.name, primary.kind, primary.base_url) == (
        "primary",
        "openai",
        "https://api.deepseek.com/v1",
    )
    assert (primary.weight, primary.priority, primary.rpm_limit, primary.tpm_limit) == (
        3,
        0,
        60,
        None,
    )
    assert primary.provider_model_name == "deepseek-chat"
    assert snapshot.credential_secret(primary.credential_id).api_key == "sk-ds"
    assert (backup.base_url, backup.credential_id, backup.headers) == (
        "http://127.0.0.1:9100/openai/v1",
        None,
        (("X-Team", "a"),),
    )
    assert "sk-ds" not in repr(snapshot)


def test_refresh_after_a_write_is_at_most_once_per_check_interval(django_assert_num_queries):
    model = ModelFactory(provider=ProviderFactory(slug="openai"), provider_model_name="gpt-5")
    first = catalog_snapshot()
    assert first.models["openai/gpt-5"].quality_tier == 2
    model_override(model=model, fields={"quality_tier": 4})
    # Within the check interval the same snapshot is served, with no query.
    with django_assert_num_queries(0):
        assert catalog_snapshot() is first
    refreshed = catalog_snapshot(max_age=0)
    assert refreshed is not first
    assert refreshed.models["openai/gpt-5"].quality_tier == 4
    assert refreshed.version == first.version + 1
    # Nothing changed: a check finds the same version and keeps the snapshot.
    assert catalog_snapshot(max_age=0) is refreshed


def test_async_accessor_serves_a_warm_snapshot_without_touching_the_database(
    django_assert_num_queries,
):
    _catalog(1)
    warm = catalog_snapshot()
    with django_assert_num_queries(0):
        assert asyncio.run(acatalog_snapshot()) is warm


def test_provider_disabled_later_drops_its_deployments():
    _catalog(1)
    assert len(catalog_snapshot().deployments["openai/m0"]) == 1
    from routing.services import provider_upsert

    provider_upsert(slug="openai", enabled=False)
    assert catalog_snapshot(max_age=0).deployments.get("openai/m0") is None
    assert Provider.objects.get(slug="openai").enabled is False
