"""The single sign-on pages of the console (/o/<slug>/sso/): owners only, field errors on bad
input, the client secret stored encrypted and never shown, audited changes, and no way to reach
another organization's providers or mappings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from identity import services
from identity.models import GroupMapping, IdentityProvider, SsoPolicy
from megarouter.crypto import decrypt_text
from orgs.models import AuditEvent, Role
from tests.console.factories import SYSTEM, Tenant, UserFactory, add_member, make_tenant
from tests.identity.op import TestOP

pytestmark = pytest.mark.django_db


@pytest.fixture
def op() -> Iterator[TestOP]:
    cache.clear()
    with TestOP("pages") as provider:
        yield provider
    cache.clear()


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _form(op: TestOP, **over: str) -> dict[str, str]:
    return {
        "name": "Okta",
        "discovery_url": op.discovery_url,
        "client_id": "mr-console",
        "client_secret": "s3cret-value",
        "domains": "acme.example, acme-corp.example",
        "scopes": "openid email profile",
        "groups_claim": "groups",
        "enabled": "on",
        **over,
    }


def _provider(t: Tenant, op: TestOP, name: str = "Okta", domain: str = "acme.example") -> Any:
    return services.identity_provider_create(
        actor=SYSTEM,
        organization=t.tree.org,
        name=name,
        discovery_url=op.discovery_url,
        client_id="mr",
        client_secret="s3cret-value",
        domains=[domain],
    )


def test_an_owner_adds_a_provider_whose_secret_is_stored_encrypted(op):
    acme = make_tenant("acme")
    client = login(acme.tree.owner)
    page = client.get("/o/acme/sso/")
    assert page.status_code == 200
    assert "http://testserver/sso/acme/callback/" in page.content.decode()
    response = client.post("/o/acme/sso/", _form(op))
    provider = IdentityProvider.objects.get(organization=acme.tree.org)
    assert response.status_code == 302
    assert response["Location"] == f"/o/acme/sso/providers/{provider.pk}/"
    assert "s3cret-value" not in provider.client_secret_encrypted
    assert decrypt_text(provider.client_secret_encrypted) == "s3cret-value"
    assert sorted(provider.domains.values_list("domain", flat=True)) == [
        "acme-corp.example",
        "acme.example",
    ]
    event = AuditEvent.objects.get(action="identity_provider.create")
    assert "s3cret-value" not in str(event.changes)
    detail = client.get(f"/o/acme/sso/providers/{provider.pk}/").content.decode()
    assert "s3cret-value" not in detail and "Okta" in detail
    # saving with an empty secret keeps the stored one
    response = client.post(
        f"/o/acme/sso/providers/{provider.pk}/", _form(op, client_secret="", name="Okta EU")
    )
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.name == "Okta EU"
    assert decrypt_text(provider.client_secret_encrypted) == "s3cret-value"


def test_bad_input_gets_field_errors_and_changes_nothing(op):
    acme = make_tenant("acme")
    globex = make_tenant("globex")
    _provider(globex, op, domain="globex.example")
    client = login(acme.tree.owner)
    cases = {
        "discovery_url": (
            {"discovery_url": "http://idp.example/.well-known/openid-configuration"},
            "Enter the provider&#x27;s https URL",
        ),
        "client_secret": ({"client_secret": ""}, "Enter the client secret the provider issued."),
        "domains": ({"domains": "gmail.com"}, "gmail.com is a public email service"),
        "scopes": ({"scopes": "email profile"}, "Space-separated scopes that include openid."),
        "groups_claim": ({"groups_claim": "a b"}, "A claim name"),
    }
    for field, (over, message) in cases.items():
        response = client.post("/o/acme/sso/", _form(op, **over))
        assert response.status_code == 400, field
        assert message in response.content.decode(), field
        assert response.context["form"].errors[field], field
    taken = client.post("/o/acme/sso/", _form(op, domains="globex.example"))
    assert taken.context["form"].errors["domains"] == [
        "globex.example is already used for single sign-on by another organization."
    ]
    unreachable = client.post(
        "/o/acme/sso/",
        _form(op, discovery_url="http://127.0.0.1:9/.well-known/openid-configuration"),
    )
    assert (
        "Could not read an OpenID configuration there"
        in unreachable.context["form"].errors["discovery_url"][0]
    )
    assert not IdentityProvider.objects.filter(organization=acme.tree.org).exists()
    assert not AuditEvent.objects.filter(
        organization=acme.tree.org, action__startswith="identity_provider"
    ).exists()


def test_mappings_are_added_with_field_errors_and_removed(op):
    acme = make_tenant("acme")
    provider = _provider(acme, op)
    client = login(acme.tree.owner)
    url = f"/o/acme/sso/providers/{provider.pk}/"
    added = client.post(
        url + "mapping/", {"group": "eng-platform", "node": acme.tree.team.pk, "role": "developer"}
    )
    assert added.status_code == 302
    mapping = GroupMapping.objects.get(identity_provider=provider)
    assert (mapping.group, mapping.node, mapping.role) == (
        "eng-platform",
        acme.tree.team,
        "developer",
    )
    page = client.get(url).content.decode()
    assert "eng-platform" in page and "Platform" in page
    again = client.post(
        url + "mapping/", {"group": "eng-platform", "node": acme.tree.team.pk, "role": "viewer"}
    )
    assert again.status_code == 400
    assert again.context["mapping_form"].errors["group"] == [
        "This group already maps to a role on this node."
    ]
    owner = client.post(
        url + "mapping/", {"group": "x", "node": acme.tree.team.pk, "role": "owner"}
    )
    assert owner.status_code == 400 and owner.context["mapping_form"].errors["role"]
    blank = client.post(url + "mapping/", {"group": "", "node": "", "role": "viewer"})
    assert set(blank.context["mapping_form"].errors) == {"group", "node"}
    removed = client.post(url + "unmap/", {"mapping": mapping.pk})
    assert removed.status_code == 302
    assert not GroupMapping.objects.exists()
    assert list(
        AuditEvent.objects.filter(action__startswith="group_mapping")
        .order_by("id")
        .values_list("action", flat=True)
    ) == ["group_mapping.create", "group_mapping.delete"]


def test_the_password_login_policy_is_saved_and_audited(op):
    acme = make_tenant("acme")
    client = login(acme.tree.owner)
    assert client.post("/o/acme/sso/policy/", {}).status_code == 302
    assert SsoPolicy.objects.get(organization=acme.tree.org).password_login_allowed is False
    assert client.post("/o/acme/sso/policy/", {"password_login_allowed": "on"}).status_code == 302
    assert SsoPolicy.objects.get(organization=acme.tree.org).password_login_allowed is True
    assert AuditEvent.objects.filter(action="sso_policy.update").count() == 2


def test_only_owners_configure_single_sign_on(op):
    acme = make_tenant("acme")
    provider = _provider(acme, op)
    root_admin = add_member(acme.tree.root, Role.ADMIN, UserFactory(username="root-admin")).user
    for user, status in ((acme.admin, 403), (root_admin, 403), (acme.developer, 403)):
        client = login(user)
        assert client.get("/o/acme/sso/").status_code == status
        assert client.post("/o/acme/sso/", _form(op, name="Other")).status_code == status
        assert (
            client.post(f"/o/acme/sso/providers/{provider.pk}/", _form(op, name="X")).status_code
            == status
        )
    provider.refresh_from_db()
    assert provider.name == "Okta"
    assert IdentityProvider.objects.count() == 1


def test_another_organizations_providers_and_mappings_cannot_be_reached(op):
    acme = make_tenant("acme")
    globex = make_tenant("globex")
    acme_provider = _provider(acme, op, name="Acme Workforce")
    mapping = services.group_mapping_create(
        actor=SYSTEM, provider=acme_provider, group="eng", node=acme.tree.team, role="viewer"
    )
    globex_provider = _provider(globex, op, name="Globex IdP", domain="globex.example")
    intruder = login(globex.tree.owner)
    assert intruder.get("/o/acme/sso/").status_code == 404
    assert intruder.get(f"/o/acme/sso/providers/{acme_provider.pk}/").status_code == 404
    assert intruder.get(f"/o/globex/sso/providers/{acme_provider.pk}/").status_code == 404
    assert (
        intruder.post(f"/o/globex/sso/providers/{acme_provider.pk}/", _form(op)).status_code == 404
    )
    # acme's mapping id at globex's own provider: not found, nothing removed
    assert (
        intruder.post(
            f"/o/globex/sso/providers/{globex_provider.pk}/unmap/", {"mapping": mapping.pk}
        ).status_code
        == 404
    )
    # acme's node in a mapping of globex's provider: not a choice
    response = intruder.post(
        f"/o/globex/sso/providers/{globex_provider.pk}/mapping/",
        {"group": "eng", "node": acme.tree.team.pk, "role": "viewer"},
    )
    assert response.status_code == 400 and response.context["mapping_form"].errors["node"]
    assert GroupMapping.objects.filter(pk=mapping.pk).exists()
    assert GroupMapping.objects.count() == 1
    acme_provider.refresh_from_db()
    assert acme_provider.name == "Acme Workforce"
    assert "Acme Workforce" not in intruder.get("/o/globex/sso/").content.decode()
