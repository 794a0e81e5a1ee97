"""Routing policies (set, replace, remove, preview a route) and deployment health in the
console, over routing.policies, routing.engine and routing.health."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.test import Client

from routing.health import HealthConfig, LocalHealth, health_store_set
from routing.policies import policy_table_reset
from routing.policy_models import RoutingPolicy
from tests.console.factories import (
    DeploymentFactory,
    ModelFactory,
    ProviderFactory,
    Tenant,
    make_tenant,
    spend,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_routing_state():
    store = LocalHealth(HealthConfig(refresh_interval=0.0, flush_interval=0.0))
    health_store_set(store)
    policy_table_reset()
    yield store
    health_store_set(None)
    policy_table_reset()


@pytest.fixture
def acme() -> Tenant:
    return make_tenant("acme")


@pytest.fixture
def catalog() -> dict[str, Any]:
    cheap = ProviderFactory(slug="cheapco", name="CheapCo")
    dear = ProviderFactory(slug="dearco", name="DearCo")
    small = ModelFactory(
        provider=cheap,
        provider_model_name="small",
        quality_tier=1,
        price=(Decimal("0.0000001"), Decimal("0.0000002")),
    )
    big = ModelFactory(
        provider=dear,
        provider_model_name="big",
        quality_tier=4,
        price=(Decimal("0.00001"), Decimal("0.00003")),
    )
    return {
        "small": DeploymentFactory(name="small-1", model=small),
        "big": DeploymentFactory(name="big-1", model=big),
    }


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_set_replace_and_remove_a_policy(acme):
    client = login(acme.tree.owner)
    response = client.post(
        "/o/acme/policies/",
        {
            "node": acme.tree.team.pk,
            "strategy": "cost",
            "blocked_models": "dearco/*",
            "max_price_per_million": "5",
            "quality_floor": "2",
            "cost_quality": "0.30",
        },
    )
    assert response["Location"] == "/o/acme/policies/"
    policy = RoutingPolicy.objects.get(node=acme.tree.team)
    assert policy.document == {
        "strategy": "cost",
        "blocked_models": ["dearco/*"],
        "max_price_per_million": "5",
        "quality_floor": 2,
        "cost_quality": "0.3",
    }
    page = client.get(f"/o/acme/policies/?node={acme.tree.team.pk}")
    assert page.context["rows"][0]["doc"] == {
        "strategy": "cost",
        "blocked_models": ["dearco/*"],
        "max_price_per_million": "5",
        "quality_floor": 2,
        "cost_quality": "0.3",
    }
    assert 'name="cost_quality"' in page.content.decode()
    assert page.context["form"].initial["blocked_models"] == "dearco/*"

    client.post("/o/acme/policies/", {"node": acme.tree.team.pk, "strategy": "latency"})
    policy.refresh_from_db()
    assert policy.document == {"strategy": "latency"}
    response = client.post(f"/o/acme/policies/{policy.pk}/delete/")
    assert response.status_code == 302
    assert not RoutingPolicy.objects.filter(node=acme.tree.team).exists()


def test_policy_errors_and_refusals_change_nothing(acme):
    client = login(acme.tree.owner)
    response = client.post("/o/acme/policies/", {"node": acme.tree.team.pk, "max_latency_ms": "0"})
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "max_latency_ms": ["must be a positive integer (milliseconds)"]
    }
    response = client.post("/o/acme/policies/", {"node": acme.tree.team.pk, "cost_quality": "2"})
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "cost_quality": ["must be a number from 0 (cheapest) to 1 (best)"]
    }
    response = client.post(
        "/o/acme/policies/",
        {"node": acme.tree.team.pk, "allowed_models": "x" * 256},
    )
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "allowed_models": ["entries must be 1 to 255 characters"]
    }
    # a viewer and another organization's owner are refused
    assert (
        login(acme.viewer)
        .post("/o/acme/policies/", {"node": acme.tree.team.pk, "strategy": "cost"})
        .status_code
        == 403
    )
    other = make_tenant("other")
    assert (
        login(other.tree.owner)
        .post("/o/acme/policies/", {"node": acme.tree.team.pk, "strategy": "cost"})
        .status_code
        == 404
    )
    assert list(RoutingPolicy.objects.order_by("id").values_list("node_id", "document")) == [
        (acme.tree.team.pk, {"strategy": "cost"}),  # the fixture's, untouched
        (other.tree.team.pk, {"strategy": "cost"}),
    ]


def test_preview_route_follows_the_policies(acme, catalog):
    client = login(acme.viewer)
    query = {
        "preview-node": acme.tree.project.pk,
        "preview-model": "auto:cost",
        "preview-prompt": "What is 2 + 2?",
    }
    preview = client.get("/o/acme/policies/", query).context["preview"]
    assert preview["strategy"] == "cost"
    # the order depends on the difficulty estimate (the trained model): check what does not
    assert preview["tier"] in (1, 2, 3, 4)
    prices = {c["deployment"]: str(c["input"]) for c in preview["candidates"]}
    assert prices == {"big-1": "10", "small-1": "0.1"}  # $ per million input tokens
    fixed = client.get("/o/acme/policies/", {**query, "preview-model": "dearco/big"})
    assert fixed.context["preview"]["strategy"] == "fixed"
    assert [c["deployment"] for c in fixed.context["preview"]["candidates"]] == ["big-1"]
    # a policy above the project blocks the dear provider: the preview changes with it
    login(acme.tree.owner).post(
        "/o/acme/policies/", {"node": acme.tree.dept.pk, "blocked_providers": "dearco"}
    )
    policy_table_reset()
    preview = client.get("/o/acme/policies/", query).context["preview"]
    assert [c["deployment"] for c in preview["candidates"]] == ["small-1"]
    assert preview["policy"]["levels"] == ["department", "team"]  # the fixture's team policy
    refused = client.get("/o/acme/policies/", {**query, "preview-model": "dearco/big"})
    assert "candidates" not in refused.context["preview"]
    assert refused.context["preview"]["code"] == "no_eligible_model"
    # a model nobody serves: the engine's refusal is shown
    preview = client.get("/o/acme/policies/", {**query, "preview-model": "nope/none"}).context[
        "preview"
    ]
    assert preview["code"] == "model_not_found"


def test_deployments_show_live_health_and_breaker_state(acme, catalog, _fresh_routing_state):
    store = _fresh_routing_state
    store.record(catalog["small"].pk, ok=True, latency_ms=120.0)
    for _ in range(5):
        store.record(catalog["big"].pk, ok=False, latency_ms=30.0)
    store.flush()
    response = login(acme.viewer).get("/o/acme/deployments/")
    health = {d.name: d.health for d in response.context["page"].object_list}
    assert health["small-1"]["state"] == "closed"
    assert health["small-1"]["latency_ms"] == 120.0
    assert (health["big-1"]["state"], health["big-1"]["consecutive_failures"]) == ("open", 5)
    body = response.content.decode()
    assert "Breaker open" in body and "Healthy" in body and "120.0 ms" in body


# ---------------------------------------------------------------- provider summary, detail

NOW = dt.datetime(2026, 12, 4, 10, 30, tzinfo=dt.UTC)


@pytest.fixture
def _clock() -> Any:
    with time_machine.travel(NOW, tick=True):
        yield


def _sick(store: LocalHealth, catalog: dict[str, Any]) -> None:
    store.record(catalog["small"].pk, ok=True, latency_ms=120.0)
    for _ in range(5):
        store.record(catalog["big"].pk, ok=False, latency_ms=30.0)
    store.flush()


def test_the_provider_summary_puts_problems_first(acme, catalog, _fresh_routing_state):
    _sick(_fresh_routing_state, catalog)
    DeploymentFactory(name="small-2", model=catalog["small"].model)  # never reached: no data
    response = login(acme.viewer).get("/o/acme/deployments/")
    summary = response.context["summary"]
    assert [row["slug"] for row in summary] == ["dearco", "cheapco"]
    dear, cheap = summary
    assert (dear["open"], dear["healthy"]) == (1, 0)
    assert dear["error_rate"] == round(_fresh_routing_state.view(catalog["big"].pk).error_rate, 4)
    assert (cheap["healthy"], cheap["no_data"], cheap["latency_ms"]) == (1, 1, 120.0)
    body = response.content.decode()
    assert body.index("1 breaker open") < body.index("1 healthy") < body.index("1 no data")
    detail = f"/o/acme/deployments/{catalog['big'].pk}/"
    assert detail in body  # each deployment links to its page


def test_sparklines_are_this_organizations_last_24_hours(acme, catalog, _clock):
    from billing.analytics.rollups import rollup_advance
    from billing.models import FailedRequestCount

    tree = acme.tree
    model = catalog["small"].model.canonical_id
    for _ in range(3):
        spend(tree.project, tree.owner_membership, acme.owner_key, "0.01", model=model)
    _root, dept, team, project = tree.project.ancestor_ids
    FailedRequestCount.objects.create(
        organization=tree.org,
        hour=NOW.replace(minute=0),
        department_id=dept,
        team_id=team,
        project_id=project,
        member_id=tree.owner_membership.pk,
        key_id=acme.owner_key.pk,
        model=model,
        provider="cheapco",
        status=502,
        code="all_deployments_failed",
        count=1,
    )
    rollup_advance(lag_seconds=0)
    response = login(tree.owner).get("/o/acme/deployments/")
    cheap = {row["slug"]: row for row in response.context["summary"]}["cheapco"]
    assert (cheap["traffic"]["requests"], cheap["traffic"]["failed"]) == (3, 1)
    assert cheap["traffic"]["latency"]["last"] == 120.0  # the recorded requests' latency
    assert cheap["traffic"]["errors"]["last"] == 25.0  # 1 of the 4 requests made
    body = response.content.decode()
    assert "Average latency, hour by hour: last 120.0 ms" in body
    assert "Did not succeed, hour by hour: last 25.0%" in body
    page = login(tree.owner).get(f"/o/acme/deployments/{catalog['small'].pk}/")
    assert page.status_code == 200
    assert page.context["traffic"]["requests"] == 3
    assert "3 answered, 1 did not succeed" in page.content.decode()
    # another organization sees the same catalog and health, none of acme's traffic
    other = make_tenant("other")
    theirs = login(other.tree.owner).get(f"/o/other/deployments/{catalog['small'].pk}/")
    assert theirs.status_code == 200 and theirs.context["traffic"] is None
    assert "No requests from this organization" in theirs.content.decode()
    summary = login(other.tree.owner).get("/o/other/deployments/").context["summary"]
    assert all(row.get("traffic") is None for row in summary)


def test_a_deployment_page_shows_the_health_routing_uses(acme, catalog, _fresh_routing_state):
    _sick(_fresh_routing_state, catalog)
    response = login(acme.viewer).get(f"/o/acme/deployments/{catalog['big'].pk}/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Breaker open" in body and "5 failures in a row" in body
    assert response.context["h"]["state"] == "open"
    assert login(acme.viewer).get("/o/acme/deployments/999999/").status_code == 404


def test_policy_lists_pick_from_the_catalog_and_point_out_unknown_entries(acme, catalog):
    from routing.catalog import catalog_snapshot_reset

    catalog_snapshot_reset()
    client = login(acme.tree.owner)
    page = client.get("/o/acme/policies/").content.decode()
    assert '<datalist id="choices-models">' in page
    assert '<option value="cheapco/small">' in page and '<option value="dearco/big">' in page
    assert '<option value="dearco">' in page  # providers
    assert 'name="allowed_models"' in page and 'data-picker="models"' in page
    assert 'list="choices-models"' in page  # the reference model's input
    response = client.post(
        "/o/acme/policies/",
        {"node": acme.tree.team.pk, "allowed_models": "cheapco/small\ndearco/bigg"},
        follow=True,
    )
    shown = [str(m) for m in response.context["messages"]]
    assert shown == [
        f"Routing policy of {acme.tree.team.name} saved.",
        "Allowed models: 'dearco/bigg' matches no model in the catalog today.",
    ]
    policy = RoutingPolicy.objects.get(node=acme.tree.team)
    assert policy.document == {"allowed_models": ["cheapco/small", "dearco/bigg"]}
