"""The management API of single sign-on: owners create, read and change providers (the secret
write-only) and mappings, with field errors; other roles 403; another organization's rows 404
with nothing changed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from identity import services
from identity.models import GroupMapping, IdentityProvider, SsoDomain
from megarouter.crypto import decrypt_text
from orgs.models import AuditEvent, Role
from tests.identity.op import TestOP
from tests.orgs.factories import SYSTEM, UserFactory, add_member, make_tree

pytestmark = pytest.mark.django_db


@pytest.fixture
def op() -> Iterator[TestOP]:
    cache.clear()
    with TestOP("api") as provider:
        yield provider
    cache.clear()


def client_of(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _body(op: TestOP, **over: Any) -> dict[str, Any]:
    return {
        "name": "Okta",
        "discovery_url": op.discovery_url,
        "client_id": "mr",
        "client_secret": "s3cret-value",
        "domains": ["acme.example"],
        **over,
    }


def _snapshot() -> dict[str, Any]:
    return {
        "providers": list(IdentityProvider.objects.order_by("id").values()),
        "domains": list(SsoDomain.objects.order_by("id").values()),
        "mappings": list(GroupMapping.objects.order_by("id").values()),
        "audit": AuditEvent.objects.count(),
    }


def test_an_owner_manages_providers_and_mappings(op):
    acme = make_tree("acme")
    api = client_of(acme.owner)
    created = api.post("/api/orgs/acme/identity-providers/", _body(op), format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["domains"] == ["acme.example"] and body["has_client_secret"] is True
    assert "client_secret" not in body and "s3cret-value" not in created.content.decode()
    pk = body["id"]
    changed = api.patch(
        f"/api/orgs/acme/identity-providers/{pk}/", {"enabled": False}, format="json"
    )
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    provider = IdentityProvider.objects.get(pk=pk)
    assert provider.scopes == "openid email profile"  # a PATCH changes only what it names
    assert decrypt_text(provider.client_secret_encrypted) == "s3cret-value"
    listed = api.get("/api/orgs/acme/identity-providers/").json()
    assert [p["id"] for p in listed["results"]] == [pk]

    mapping = api.post(
        "/api/orgs/acme/group-mappings/",
        {"identity_provider": pk, "group": "eng", "node": acme.team.pk, "role": "developer"},
        format="json",
    )
    assert mapping.status_code == 201, mapping.json()
    mapping_id = mapping.json()["id"]
    assert api.get(f"/api/orgs/acme/group-mappings/?identity_provider={pk}").json()["count"] == 1
    assert api.delete(f"/api/orgs/acme/group-mappings/{mapping_id}/").status_code == 204
    assert not GroupMapping.objects.exists()


def test_bad_input_is_answered_with_field_errors(op):
    acme = make_tree("acme")
    api = client_of(acme.owner)
    provider = services.identity_provider_create(
        actor=SYSTEM, organization=acme.org, **_body(op, name="Existing", domains=["acme.org"])
    )
    before = _snapshot()
    cases = [
        ({"domains": ["gmail.com"]}, "domains"),
        ({"discovery_url": "ftp://idp.example/"}, "discovery_url"),
        ({"scopes": "email"}, "scopes"),
        ({"domains": []}, "domains"),
        ({"client_secret": None}, "client_secret"),
    ]
    for over, field in cases:
        body = {k: v for k, v in _body(op, **over).items() if v is not None}
        response = api.post("/api/orgs/acme/identity-providers/", body, format="json")
        assert response.status_code == 400, (field, response.json())
        assert field in response.json(), (field, response.json())
    owner_role = api.post(
        "/api/orgs/acme/group-mappings/",
        {"identity_provider": provider.pk, "group": "x", "node": acme.team.pk, "role": "owner"},
        format="json",
    )
    assert owner_role.status_code == 400 and "role" in owner_role.json()
    assert _snapshot() == before


def test_only_owners_reach_single_sign_on(op):
    acme = make_tree("acme")
    provider = services.identity_provider_create(actor=SYSTEM, organization=acme.org, **_body(op))
    admin = add_member(acme.root, Role.ADMIN, UserFactory()).user
    developer = add_member(acme.team, Role.DEVELOPER, UserFactory()).user
    before = _snapshot()
    for user in (admin, developer):
        api = client_of(user)
        assert api.get("/api/orgs/acme/identity-providers/").status_code == 403
        assert (
            api.patch(
                f"/api/orgs/acme/identity-providers/{provider.pk}/", {"name": "X"}, format="json"
            ).status_code
            == 403
        )
    assert _snapshot() == before


def test_another_organizations_providers_and_mappings_are_not_found(op):
    acme = make_tree("acme")
    globex = make_tree("globex")
    acme_provider = services.identity_provider_create(
        actor=SYSTEM, organization=acme.org, **_body(op)
    )
    acme_mapping = services.group_mapping_create(
        actor=SYSTEM, provider=acme_provider, group="eng", node=acme.team, role="viewer"
    )
    globex_provider = services.identity_provider_create(
        actor=SYSTEM, organization=globex.org, **_body(op, domains=["globex.example"])
    )
    api = client_of(globex.owner)
    before = _snapshot()
    assert api.get("/api/orgs/acme/identity-providers/").status_code == 404
    calls = [
        api.get(f"/api/orgs/globex/identity-providers/{acme_provider.pk}/"),
        api.patch(
            f"/api/orgs/globex/identity-providers/{acme_provider.pk}/",
            {"enabled": False},
            format="json",
        ),
        api.get(f"/api/orgs/globex/group-mappings/{acme_mapping.pk}/"),
        api.delete(f"/api/orgs/globex/group-mappings/{acme_mapping.pk}/"),
    ]
    assert [c.status_code for c in calls] == [404, 404, 404, 404]
    listed = api.get("/api/orgs/globex/identity-providers/").json()
    assert [p["id"] for p in listed["results"]] == [globex_provider.pk]
    # acme's provider or node in a mapping of globex: reads as not existing
    foreign = [
        {"identity_provider": acme_provider.pk, "node": globex.team.pk},
        {"identity_provider": globex_provider.pk, "node": acme.team.pk},
    ]
    for ids in foreign:
        response = api.post(
            "/api/orgs/globex/group-mappings/",
            {**ids, "group": "eng", "role": "viewer"},
            format="json",
        )
        assert response.status_code == 400
        assert set(response.json()) == (
            {"identity_provider"} if ids["node"] == globex.team.pk else {"node"}
        )
    assert _snapshot() == before
