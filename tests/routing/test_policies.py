"""Routing policies: validation, the per-level merge, resolution from the in-process table
(no queries when warm, changes seen after the version check), the management API (tenancy,
permissions, audit) and the operator file's [[policies]] section."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orgs.keys import key_context_for_sync
from orgs.models import AuditEvent, Role
from routing.operator_config import ConfigFileError, config_apply
from routing.policies import (
    PolicyError,
    PolicySpec,
    policy_for_key,
    policy_merge,
    policy_table,
    policy_table_reset,
    routing_policy_set,
)
from routing.policy_models import RoutingPolicy, RoutingPolicyVersion
from tests.orgs.factories import SYSTEM, add_member, make_key, make_tree

URL = "/api/orgs/{org}/routing-policies/"


@pytest.fixture
def login():
    from rest_framework.test import APIClient

    def _login(user):
        api = APIClient()
        api.force_login(user)
        return api

    return _login


@pytest.fixture(autouse=True)
def _fresh_policy_table():
    policy_table_reset()
    yield
    policy_table_reset()


# ---------------------------------------------------------------- documents and the merge


def test_cost_quality_is_a_number_from_0_to_1():
    message = "must be a number from 0 (cheapest) to 1 (best)"
    for bad in ("1.5", -0.1, "abc", True, [0.5], "NaN"):
        with pytest.raises(PolicyError) as caught:
            PolicySpec.from_document({"cost_quality": bad})
        assert caught.value.errors == {"cost_quality": message}, bad
    for good, stored in ((0, "0"), ("0.25", "0.25"), (1, "1"), (0.7, "0.7")):
        spec = PolicySpec.from_document({"cost_quality": good})
        assert spec.to_document() == {"cost_quality": stored}


def test_document_validation_names_every_bad_field():
    with pytest.raises(PolicyError) as caught:
        PolicySpec.from_document(
            {
                "strategy": "fastest",
                "allowed_models": "openai/*",
                "max_price_per_million": "-1",
                "max_latency_ms": 0,
                "quality_floor": 5,
                "zero_data_retention_only": "yes",
                "colour": "blue",
            }
        )
    assert caught.value.errors == {
        "colour": "unknown field; known: strategy, allowed_models, blocked_models, "
        "preferred_models, fallbacks, allowed_providers, blocked_providers, allowed_regions, "
        "max_price_per_million, max_cost_per_request_usd, max_latency_ms, quality_floor, "
        "zero_data_retention_only, reference_model, cost_quality",
        "strategy": "must be one of balanced, cost, latency, availability",
        "allowed_models": "must be a list of strings",
        "max_price_per_million": "must be zero or more",
        "max_latency_ms": "must be a positive integer (milliseconds)",
        "zero_data_retention_only": "must be true or false",
        "quality_floor": "must be a quality tier from 1 (economy) to 4 (frontier)",
    }


def test_document_round_trip():
    spec = PolicySpec.from_document(
        {"strategy": "cost", "allowed_regions": ["eu-west-1"], "max_price_per_million": "2.5"}
    )
    assert spec == PolicySpec(
        strategy="cost", allowed_regions=("eu-west-1",), max_price_per_million=Decimal("2.5")
    )


def test_merge_nearest_preference_wins_and_restrictions_accumulate():
    merged = policy_merge(
        [
            (
                "organization",
                PolicySpec(
                    strategy="cost",
                    allowed_providers=("openai", "anthropic"),
                    blocked_models=("*preview*",),
                    max_price_per_million=Decimal("20"),
                    zero_data_retention_only=True,
                    quality_floor=2,
                ),
            ),
            ("department", None),
            (
                "team",
                PolicySpec(
                    strategy="latency",
                    allowed_providers=("openai",),
                    blocked_models=("openai/gpt-4o",),
                    max_price_per_million=Decimal("50"),  # cannot widen the org's cap
                    quality_floor=1,
                ),
            ),
            ("project", PolicySpec()),
            ("key", PolicySpec(max_cost_per_request_usd=Decimal("0.5"))),
            ("request", PolicySpec(strategy="availability", allowed_regions=("eu",))),
        ]
    )
    assert merged.strategy == "availability"
    assert merged.quality_floor == 1
    assert merged.allowed_provider_groups == (("openai", "anthropic"), ("openai",))
    assert merged.provider_allowed("openai") is True
    assert merged.provider_allowed("anthropic") is False
    assert merged.blocked_models == ("*preview*", "openai/gpt-4o")
    assert merged.model_allowed("openai/gpt-4o") is False
    assert merged.model_allowed("openai/o1-preview") is False
    assert merged.model_allowed("openai/gpt-5") is True
    assert merged.max_price_per_million == Decimal("20")
    assert merged.max_cost_per_request_usd == Decimal("0.5")
    assert merged.zero_data_retention_only is True
    assert merged.region_groups == (("eu",),)
    assert merged.levels == ("organization", "team", "key", "request")


# ---------------------------------------------------------------- resolution


@pytest.mark.django_db
def test_policy_for_key_resolves_every_level_without_queries_when_warm():
    tree = make_tree("acme")
    routing_policy_set(actor=SYSTEM, node=tree.root, data={"strategy": "cost", "quality_floor": 2})
    routing_policy_set(
        actor=SYSTEM, node=tree.team, data={"allowed_providers": ["openai"], "quality_floor": 3}
    )
    member = add_member(tree.project, Role.DEVELOPER)
    created = make_key(
        tree.project,
        member,
        routing_policy={"strategy": "latency", "blocked_models": ["openai/gpt-4o"]},
    )
    key = key_context_for_sync(created.raw_key)
    policy = policy_for_key(key)
    assert policy.strategy == "latency"
    assert policy.quality_floor == 3
    assert policy.allowed_provider_groups == (("openai",),)
    assert policy.blocked_models == ("openai/gpt-4o",)
    assert policy.levels == ("organization", "team", "key")
    with CaptureQueriesContext(connection) as queries:
        again = policy_for_key(key, PolicySpec(strategy="balanced"))
    assert len(queries) == 0
    assert again.strategy == "balanced"


@pytest.mark.django_db
def test_a_change_is_seen_after_the_version_check():
    tree = make_tree("acme")
    routing_policy_set(actor=SYSTEM, node=tree.root, data={"strategy": "cost"})
    ids = (tree.root.pk, tree.dept.pk, tree.team.pk, tree.project.pk)
    assert policy_table().by_node[tree.root.pk].strategy == "cost"
    routing_policy_set(actor=SYSTEM, node=tree.root, data={"strategy": "latency"})
    # within the check interval the old table still serves; a check (max_age 0) reloads
    assert policy_table().by_node[tree.root.pk].strategy == "cost"
    assert policy_table(max_age=0).by_node[tree.root.pk].strategy == "latency"
    assert RoutingPolicyVersion.objects.get(pk=1).version == 2
    from routing.policies import policy_resolve

    assert policy_resolve(node_ids=ids).strategy == "latency"


@pytest.mark.django_db
def test_setting_the_same_policy_again_changes_nothing():
    tree = make_tree("acme")
    routing_policy_set(actor=SYSTEM, node=tree.team, data={"strategy": "cost"})
    events = AuditEvent.objects.filter(action="routing_policy.set").count()
    routing_policy_set(actor=SYSTEM, node=tree.team, data={"strategy": "cost"})
    assert AuditEvent.objects.filter(action="routing_policy.set").count() == events == 1
    assert RoutingPolicyVersion.objects.get(pk=1).version == 1


# ---------------------------------------------------------------- the management API


def _rows():
    return (
        list(RoutingPolicy.objects.order_by("id").values()),
        AuditEvent.objects.count(),
        RoutingPolicyVersion.objects.values_list("version", flat=True).first(),
    )


@pytest.mark.django_db
def test_owner_sets_replaces_reads_and_deletes_a_policy(login):
    tree = make_tree("acme")
    api = login(tree.owner)
    url = URL.format(org="acme")
    body = {"node": tree.team.pk, "policy": {"strategy": "cost", "fallbacks": ["openai/gpt-5"]}}
    response = api.post(url, body, format="json")
    assert response.status_code == 201, response.content
    policy_id = response.json()["id"]
    assert response.json()["policy"] == {"strategy": "cost", "fallbacks": ["openai/gpt-5"]}
    assert response.json()["node_kind"] == "team"
    event = AuditEvent.objects.filter(action="routing_policy.set").get()
    assert event.changes == {
        "strategy": [None, "cost"],
        "fallbacks": [None, ["openai/gpt-5"]],
    }
    response = api.put(
        f"{url}{policy_id}/",
        {"policy": {"max_price_per_million": "3.50", "zero_data_retention_only": True}},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["policy"] == {
        "max_price_per_million": "3.5",
        "zero_data_retention_only": True,
    }
    listed = api.get(url).json()
    assert [row["id"] for row in listed["results"]] == [policy_id]
    effective = api.get(f"{url}effective/", {"node": tree.project.pk}).json()
    assert effective == {
        "node": tree.project.pk,
        "levels": ["team"],
        "policy": {
            "strategy": "balanced",
            "max_price_per_million": "3.5",
            "zero_data_retention_only": True,
        },
    }
    assert api.delete(f"{url}{policy_id}/").status_code == 204
    assert not RoutingPolicy.objects.exists()
    assert AuditEvent.objects.filter(action="routing_policy.delete").count() == 1


@pytest.mark.django_db
def test_invalid_document_is_a_400_and_changes_nothing(login):
    tree = make_tree("acme")
    api = login(tree.owner)
    before = _rows()
    response = api.post(
        URL.format(org="acme"),
        {"node": tree.team.pk, "policy": {"strategy": "fastest"}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {
        "policy.strategy": ["must be one of balanced, cost, latency, availability"]
    }
    assert _rows() == before


@pytest.mark.django_db
def test_developer_can_read_but_not_change_policies(login):
    tree = make_tree("acme")
    routing_policy_set(actor=SYSTEM, node=tree.team, data={"strategy": "cost"})
    policy = RoutingPolicy.objects.get()
    developer = add_member(tree.team, Role.DEVELOPER)
    api = login(developer.user)
    url = URL.format(org="acme")
    assert api.get(url).json()["count"] == 1
    before = _rows()
    created = api.post(url, {"node": tree.project.pk, "policy": {}}, format="json")
    assert created.status_code == 403
    replaced = api.put(f"{url}{policy.pk}/", {"policy": {"strategy": "latency"}}, format="json")
    assert replaced.status_code == 403
    assert api.delete(f"{url}{policy.pk}/").status_code == 403
    assert _rows() == before


@pytest.mark.django_db
def test_another_organization_sees_and_changes_nothing(login):
    a = make_tree("alpha")
    b = make_tree("beta")
    routing_policy_set(actor=SYSTEM, node=b.team, data={"strategy": "cost"})
    b_policy = RoutingPolicy.objects.get()
    api = login(a.owner)
    before = _rows()
    assert api.get(URL.format(org="beta")).status_code == 404
    assert api.get(f"{URL.format(org='alpha')}{b_policy.pk}/").status_code == 404
    assert (
        api.put(
            f"{URL.format(org='alpha')}{b_policy.pk}/", {"policy": {}}, format="json"
        ).status_code
        == 404
    )
    assert api.delete(f"{URL.format(org='alpha')}{b_policy.pk}/").status_code == 404
    response = api.post(URL.format(org="alpha"), {"node": b.team.pk, "policy": {}}, format="json")
    assert response.status_code == 400  # another organization's node does not exist here
    assert api.get(URL.format(org="alpha")).json()["count"] == 0
    assert _rows() == before


@pytest.mark.django_db
def test_list_query_count_is_pinned(login, django_assert_max_num_queries):
    tree = make_tree("acme")
    for node in (tree.root, tree.dept, tree.team, tree.project):
        routing_policy_set(actor=SYSTEM, node=node, data={"quality_floor": 2})
    api = login(tree.owner)
    with django_assert_max_num_queries(8):
        response = api.get(URL.format(org="acme"))
    assert response.json()["count"] == 4


# ---------------------------------------------------------------- the operator file


@pytest.mark.django_db
def test_operator_file_policies_apply_once():
    tree = make_tree("acme")
    data = {
        "policies": [
            {"organization": "acme", "strategy": "cost", "quality_floor": 2},
            {
                "organization": "acme",
                "node": "eng/platform",
                "allowed_providers": ["openai"],
                "max_price_per_million": "15",
            },
        ]
    }
    result = config_apply(data=data, environ={})
    assert result.changes == ["policy acme: created", "policy acme/eng/platform: created"]
    team_policy = RoutingPolicy.objects.get(node=tree.team)
    assert team_policy.document == {"allowed_providers": ["openai"], "max_price_per_million": "15"}
    again = config_apply(data=data, environ={})
    assert again.changes == []
    data["policies"][0]["strategy"] = "latency"
    assert config_apply(data=data, environ={}).changes == ["policy acme: updated"]


@pytest.mark.django_db
def test_operator_file_bad_policies_are_refused_with_paths():
    make_tree("acme")
    before = _rows()
    with pytest.raises(ConfigFileError) as caught:
        config_apply(
            data={
                "policies": [
                    {"organization": "nope"},
                    {"organization": "acme", "node": "eng/missing"},
                    {"organization": "acme", "quality_floor": 9},
                ]
            },
            environ={},
        )
    assert caught.value.errors == [
        "policies[0].organization: no organization 'nope'",
        "policies[1].node: no node 'eng/missing' in 'acme'",
        "policies[2].quality_floor: must be a quality tier from 1 (economy) to 4 (frontier)",
    ]
    assert _rows() == before


def test_reference_model_nearest_level_wins_up_to_the_request():
    levels = [
        ("organization", PolicySpec(reference_model="openai/gpt-4o")),
        ("project", PolicySpec(reference_model="anthropic/claude-a")),
        ("key", PolicySpec.from_document({"reference_model": "anthropic/claude-b"})),
    ]
    assert policy_merge(levels).reference_model == "anthropic/claude-b"
    override = PolicySpec(reference_model="openai/gpt-c")
    assert policy_merge([*levels, ("request", override)]).reference_model == "openai/gpt-c"
    # a key policy without one inherits the project's
    key = ("key", PolicySpec.from_document({"strategy": "cost"}))
    assert policy_merge([*levels[:2], key]).reference_model == "anthropic/claude-a"
    assert policy_merge([]).reference_model is None  # the engine uses the default


@pytest.mark.django_db
def test_entries_naming_nothing_in_the_catalog_are_saved_with_warnings(login):
    """A typo or a model not yet imported is kept as written (the catalog changes after a
    policy is written) and pointed out, per field, in the answer."""
    from routing.catalog import catalog_snapshot_reset
    from tests.routing.factories import DeploymentFactory, ModelFactory, ProviderFactory

    cheap = ProviderFactory(slug="cheapco", name="CheapCo")
    model = ModelFactory(provider=cheap, provider_model_name="small")
    DeploymentFactory(name="small-eu", model=model, region="eu-west-1")
    catalog_snapshot_reset()
    tree = make_tree("acme")
    api = login(tree.owner)
    document = {
        "allowed_models": ["cheapco/*", "cheapco/smal"],
        "fallbacks": ["small"],  # a bare name the catalog resolves
        "allowed_providers": ["cheapco", "dearco"],
        "allowed_regions": ["eu-west-1"],
        "blocked_models": ["nope/*"],
        "reference_model": "cheapco/small",
    }
    response = api.post(
        URL.format(org="acme"), {"node": tree.team.pk, "policy": document}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["policy"]["allowed_models"] == ["cheapco/*", "cheapco/smal"]
    assert response.json()["warnings"] == {
        "allowed_models": "'cheapco/smal' matches no model in the catalog today",
        "allowed_providers": "'dearco' matches no provider in the catalog today",
        "blocked_models": "'nope/*' matches no model in the catalog today",
    }
    clean = api.put(
        f"{URL.format(org='acme')}{response.json()['id']}/",
        {"policy": {"allowed_models": ["cheapco/small"]}},
        format="json",
    )
    assert clean.json()["warnings"] == {}
