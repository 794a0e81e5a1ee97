"""seed_usage: exact costs from the catalog, rollups built for the seeded records (once)."""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Sum

from billing.analytics.rollups import rollup_advance, rollup_watermark
from billing.models import UsageRecord, UsageRollupDay, UsageRollupDayNode, UsageRollupHour
from gateway.providers.types import Usage
from routing.models import ModelPrice
from routing.pricing import usage_cost
from tests.billing.analytics_helpers import reference_catalog
from tests.routing.factories import ModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def scale_org():
    reference_catalog()  # openai/gpt-4o, with a cached price
    ModelFactory(
        provider=ProviderFactory(slug="openai"),
        provider_model_name="gpt-4o-mini",
        price=(D("0.00000015"), D("0.0000006")),
    )
    call_command(
        "seed_scale_org", slug="scale", members=12, teams=2, projects=4, keys=9, stdout=StringIO()
    )


def test_seed_usage_writes_exact_costs_and_rolls_up_once(scale_org):
    out = StringIO()
    call_command(
        "seed_usage", rows=700, org="scale", days=3, batch=300, stdout=out, stderr=StringIO()
    )
    result = json.loads(out.getvalue())
    assert result["rows"] == 700
    assert set(result["models"]) == {"openai/gpt-4o-mini", "openai/gpt-4o"}
    records = UsageRecord.objects.filter(organization__slug="scale")
    assert records.count() == 700
    prices = {p.model.canonical_id: p for p in ModelPrice.objects.select_related("model")}
    for r in records.order_by("id")[:50]:
        usage = Usage(
            prompt_tokens=r.tokens_in, completion_tokens=r.tokens_out, cached_tokens=r.tokens_cached
        )
        assert r.cost == usage_cost(prices[r.model], usage)
        assert r.key_id and r.project_id and r.team_id and r.department_id and r.member_id
    total = records.aggregate(s=Sum("cost"), n=Sum("tokens_in"))
    for table in (UsageRollupHour, UsageRollupDay, UsageRollupDayNode):
        sums = table.objects.aggregate(s=Sum("cost"), r=Sum("requests"), n=Sum("tokens_in"))
        assert (sums["r"], sums["n"]) == (700, total["n"])
        if connection.vendor == "postgresql":
            assert sums["s"] == total["s"]  # exact
        else:  # SQLite sums decimals as floats (15 digits)
            assert D(sums["s"]).quantize(D("1e-9")) == D(total["s"]).quantize(D("1e-9"))
    assert rollup_watermark() == records.order_by("-id").first().pk
    assert rollup_advance(lag_seconds=0) == 0  # the seeded records are not counted again


def test_seed_usage_needs_an_organization_and_a_catalog(db):
    with pytest.raises(CommandError, match="no organization"):
        call_command("seed_usage", rows=10, org="missing")
    call_command(
        "seed_scale_org", slug="bare", members=2, teams=1, projects=1, keys=1, stdout=StringIO()
    )
    with pytest.raises(CommandError, match="catalog_import"):
        call_command("seed_usage", rows=10, org="bare")
    assert UsageRecord.objects.count() == 0
