from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from routing.models import CatalogVersion, ModelPrice
from routing.selectors import model_price_history, price_at
from routing.services import CatalogError, PriceInput, model_price_set
from tests.routing.factories import T0, ModelFactory

pytestmark = pytest.mark.django_db


def _price(input_per_million: str, output_per_million: str) -> PriceInput:
    million = Decimal(1_000_000)
    return PriceInput(
        input_per_token=Decimal(input_per_million) / million,
        output_per_token=Decimal(output_per_million) / million,
    )


def test_usage_at_time_t_gets_the_price_in_force_at_t():
    model = ModelFactory(price=(Decimal("0.000001"), Decimal("0.000002")))
    t1 = T0 + timedelta(days=10)
    t2 = T0 + timedelta(days=20)
    model_price_set(model=model, price=_price("3", "6"), effective_from=t1, source="change 1")
    model_price_set(model=model, price=_price("0.5", "1"), effective_from=t2, source="change 2")

    assert price_at(model.canonical_id, T0 - timedelta(microseconds=1)) is None
    assert price_at(model.canonical_id, T0).input_per_token == Decimal("0.000001")
    assert price_at(model.canonical_id, t1 - timedelta(microseconds=1)).input_per_token == Decimal(
        "0.000001"
    )
    assert price_at(model.canonical_id, t1).input_per_token == Decimal("0.000003")
    assert price_at(model.pk, t2 + timedelta(days=365)).output_per_token == Decimal("0.000001")
    assert [p.source for p in model_price_history(model.canonical_id)] == [
        "factory",
        "change 1",
        "change 2",
    ]


def test_same_price_adds_no_version_and_does_not_bump_the_catalog():
    model = ModelFactory(price=(Decimal("0.000001"), Decimal("0.000002")))
    assert model_price_set(model=model, price=_price("1", "2")) is None
    assert ModelPrice.objects.filter(model=model).count() == 1
    assert CatalogVersion.objects.count() == 0


def test_a_version_is_never_edited():
    model = ModelFactory()
    version = model.prices.get()
    version.input_per_token = Decimal("9")
    with pytest.raises(ValidationError, match="immutable"):
        version.save()
    with pytest.raises(CatalogError, match="versions are never edited"):
        model_price_set(model=model, price=_price("9", "9"), effective_from=T0)
    assert model.prices.get().input_per_token == Decimal("0.000001")


def test_price_change_bumps_the_catalog_version():
    model = ModelFactory()
    model_price_set(model=model, price=_price("2", "4"), effective_from=T0 + timedelta(days=1))
    assert CatalogVersion.objects.get().version == 1
    assert model.prices.count() == 2


def test_model_current_price_is_the_latest_effective_version():
    model = ModelFactory(price=(Decimal("0.000001"), Decimal("0.000002")))
    model_price_set(model=model, price=_price("5", "6"), effective_from=T0 + timedelta(days=1))
    future = model_price_set(
        model=model, price=_price("7", "8"), effective_from=T0 + timedelta(days=36500)
    )
    assert future is not None
    assert model.current_price.input_per_token == Decimal("0.000005")
