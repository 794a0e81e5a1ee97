"""Every console page is scoped as the management API: a viewer sees but every change is
refused (403), a member of another organization gets 404 for every page and change, and a
refused change leaves every table exactly as it was."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from billing.models import Budget, LedgerEntry
from orgs.models import (
    ApiKey,
    ApiKeySecret,
    AuditEvent,
    Invitation,
    Membership,
    Node,
    Organization,
    ServiceToken,
)
from routing.policy_models import RoutingPolicy
from tests.console.factories import Tenant, make_tenant

pytestmark = pytest.mark.django_db


def snapshot() -> dict[str, Any]:
    """Everything a console change could touch."""
    return {
        "orgs": list(
            Organization.objects.values_list(
                "id", "name", "slug", "time_zone", "require_mfa", "archived_at"
            )
        ),
        "nodes": list(
            Node.objects.order_by("id").values_list(
                "id", "name", "slug", "parent_id", "path", "archived_at"
            )
        ),
        "memberships": list(
            Membership.objects.order_by("id").values_list(
                "id", "user_id", "node_id", "role", "removed_at"
            )
        ),
        "invitations": list(
            Invitation.objects.order_by("id").values_list("id", "email", "revoked_at")
        ),
        "keys": list(
            ApiKey.objects.order_by("id").values_list(
                "id",
                "name",
                "prefix",
                "rpm_limit",
                "tpm_limit",
                "allowed_models",
                "ip_allowlist",
                "expires_at",
                "revoked_at",
            )
        ),
        "secrets": list(ApiKeySecret.objects.order_by("id").values_list("id", "valid_until")),
        "budgets": list(
            Budget.objects.order_by("id").values_list(
                "id", "limit_usd", "thresholds", "mode", "name", "notify_emails"
            )
        ),
        "policies": list(
            RoutingPolicy.objects.order_by("id").values_list("id", "node_id", "document")
        ),
        "ledger": list(LedgerEntry.objects.order_by("id").values_list("id", "amount")),
        "service_tokens": list(
            ServiceToken.objects.order_by("id").values_list("id", "expires_at", "revoked_at")
        ),
        "audit": AuditEvent.objects.count(),
        "users": get_user_model().objects.count(),
    }


@pytest.fixture
def world() -> tuple[Tenant, Tenant]:
    acme, other = make_tenant("acme"), make_tenant("other")
    for owner in (acme.tree.owner, other.tree.owner):  # owners turning on required MFA need it
        TOTPDevice.objects.create(user=owner, name="console", confirmed=True)
    return acme, other


def client_for(user: Any) -> Client:
    """A logged-in session; one that passed MFA when the user has it (tests/console/test_mfa.py
    goes through the login pages)."""
    client = Client()
    client.force_login(user)
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    if device is not None:
        session = client.session
        session["otp_device_id"] = device.persistent_id
        session.save()
    return client


def mutations(t: Tenant) -> list[tuple[str, dict[str, Any]]]:
    """Every console POST against tenant ``t``, with data that would succeed for its owner."""
    slug = t.tree.org.slug
    o = f"/o/{slug}"
    key = t.owner_key.pk
    member = t.developer_membership.pk
    return [
        (f"{o}/settings/", {"name": "Renamed", "time_zone": "Europe/Paris"}),
        (f"{o}/tree/", {"parent": t.tree.dept.pk, "name": "Data", "slug": "data"}),
        (f"{o}/nodes/{t.tree.team.pk}/rename/", {"name": "Renamed", "slug": "renamed"}),
        (f"{o}/nodes/{t.tree.team.pk}/move/", {"parent": t.other_dept.pk}),
        (f"{o}/members/", {"username": t.viewer.username, "node": t.tree.team.pk, "role": "admin"}),
        (f"{o}/members/{member}/role/", {f"m{member}-role": "admin"}),
        (f"{o}/members/{member}/remove/", {}),
        (
            f"{o}/invitations/",
            {"email": "x@example.com", "node": t.tree.team.pk, "role": "viewer", "ttl_hours": 24},
        ),
        (f"{o}/invitations/{t.invitation.pk}/revoke/", {}),
        (f"{o}/service-tokens/", {"name": "ci", "node": t.tree.team.pk, "scopes": ["keys:read"]}),
        (f"{o}/keys/new/", {"project": t.tree.project.pk, "name": "sneaky"}),
        (f"{o}/keys/{key}/update/", {"name": "changed", "rpm_limit": 5}),
        (f"{o}/keys/{key}/rotate/", {"grace_hours": 0}),
        (f"{o}/keys/{key}/revoke/", {}),
        (
            f"{o}/budgets/",
            {
                "target": f"team:{t.tree.team.pk}",
                "period": "monthly",
                "limit_usd": "5",
                "mode": "block",
                "thresholds": "50, 100",
            },
        ),
        (
            f"{o}/budgets/{t.budget.pk}/update/",
            {"limit_usd": "7", "mode": "alert", "thresholds": "90"},
        ),
        (f"{o}/budgets/{t.budget.pk}/delete/", {}),
        (f"{o}/billing/", {"amount": "25", "reference": "wire-2"}),
        (f"{o}/policies/", {"node": t.tree.dept.pk, "strategy": "latency"}),
        (f"{o}/policies/{t.policy.pk}/delete/", {}),
        (f"{o}/nodes/{t.tree.project.pk}/archive/", {"revoke_keys": "on"}),
        (f"{o}/settings/mfa/", {"require_mfa": "on"}),
        (f"{o}/settings/archive/", {"revoke_keys": "on"}),
    ]


def pages(t: Tenant) -> list[str]:
    o = f"/o/{t.tree.org.slug}"
    return [
        f"{o}/",
        f"{o}/settings/",
        f"{o}/tree/",
        f"{o}/nodes/{t.tree.team.pk}/",
        f"{o}/members/",
        f"{o}/keys/",
        f"{o}/keys/{t.owner_key.pk}/",
        f"{o}/models/",
        f"{o}/deployments/",
        f"{o}/budgets/",
        f"{o}/budgets/{t.budget.pk}/",
        f"{o}/billing/",
        f"{o}/usage/",
        f"{o}/notifications/",
        f"{o}/policies/",
    ]


def test_owner_mutations_all_succeed(world):
    """The refusals below mean something: the same requests change things for the owner."""
    acme, _ = world
    for url, data in mutations(acme):
        before = snapshot()
        response = client_for(acme.tree.owner).post(url, data)
        assert response.status_code in (200, 302), (url, response.status_code)
        assert snapshot() != before, url


def test_viewer_is_refused_every_change_and_nothing_changes(world):
    acme, _ = world
    client = client_for(acme.viewer)
    for url, data in mutations(acme):
        before = snapshot()
        response = client.post(url, data)
        assert response.status_code == 403, (url, response.status_code)
        assert snapshot() == before, url


def test_member_of_another_org_gets_404_for_every_change(world):
    acme, other = world
    client = client_for(other.tree.owner)
    for url, data in mutations(acme):
        before = snapshot()
        response = client.post(url, data)
        assert response.status_code == 404, (url, response.status_code)
        assert snapshot() == before, url


def test_another_orgs_rows_through_ones_own_org_url_are_404(world):
    """The other org's owner puts acme's ids into their own organization's URLs."""
    acme, other = world
    client = client_for(other.tree.owner)
    o = f"/o/{other.tree.org.slug}"
    member = acme.developer_membership.pk
    cases = [
        (f"{o}/nodes/{acme.tree.team.pk}/rename/", {"name": "x", "slug": "x"}),
        (f"{o}/nodes/{acme.tree.project.pk}/archive/", {"revoke_keys": "on"}),
        (f"{o}/members/{member}/role/", {f"m{member}-role": "admin"}),
        (f"{o}/members/{member}/remove/", {}),
        (f"{o}/invitations/{acme.invitation.pk}/revoke/", {}),
        (f"{o}/keys/{acme.owner_key.pk}/revoke/", {}),
        (f"{o}/keys/{acme.owner_key.pk}/rotate/", {"grace_hours": 0}),
        (f"{o}/budgets/{acme.budget.pk}/update/", {"limit_usd": "1", "thresholds": "50"}),
        (f"{o}/budgets/{acme.budget.pk}/delete/", {}),
        (f"{o}/policies/{acme.policy.pk}/delete/", {}),
    ]
    for url, data in cases:
        before = snapshot()
        assert client.post(url, data).status_code == 404, url
        assert snapshot() == before, url
    for url in (f"{o}/nodes/{acme.tree.team.pk}/", f"{o}/keys/{acme.owner_key.pk}/"):
        assert client.get(url).status_code == 404, url


def test_another_orgs_nodes_in_forms_are_field_errors(world):
    """Choosing a node of another organization in a form is an invalid choice, not a write."""
    acme, other = world
    client = client_for(other.tree.owner)
    o = f"/o/{other.tree.org.slug}"
    before = snapshot()
    response = client.post(f"{o}/tree/", {"parent": acme.tree.dept.pk, "name": "X", "slug": "x"})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    response = client.post(f"{o}/keys/new/", {"project": acme.tree.project.pk, "name": "x"})
    assert response.status_code == 400
    assert snapshot() == before


def test_viewer_sees_every_page_without_change_controls(world):
    acme, _ = world
    client = client_for(acme.viewer)
    for url in pages(acme):
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        for control in (
            "/revoke/",
            "/archive/",
            "/rename/",
            "/remove/",
            "/rotate/",
            "/update/",
            "/delete/",
            'method="post" class="stack"',
        ):
            assert control not in body, (url, control)
    # Pages only for those who manage members or read the audit log.
    assert client.get(f"/o/{acme.tree.org.slug}/invitations/").status_code == 403
    assert client.get(f"/o/{acme.tree.org.slug}/service-tokens/").status_code == 403
    assert client.get(f"/o/{acme.tree.org.slug}/audit/").status_code == 403
    assert client.get(f"/o/{acme.tree.org.slug}/keys/new/").status_code == 403


def test_outsider_gets_404_for_every_page(world):
    acme, other = world
    client = client_for(other.tree.owner)
    for url in [
        *pages(acme),
        *(f"/o/{acme.tree.org.slug}/{p}/" for p in ("audit", "service-tokens")),
    ]:
        assert client.get(url).status_code == 404, url


def test_anonymous_is_sent_to_login(world):
    acme, _ = world
    client = Client()
    for url in pages(acme):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"/login/?next={url}"
    before = snapshot()
    url, data = mutations(acme)[-1]
    assert client.post(url, data).status_code == 302
    assert snapshot() == before


def test_developer_cannot_touch_anothers_key_but_manages_own(world):
    acme, _ = world
    client = client_for(acme.developer)
    o = f"/o/{acme.tree.org.slug}"
    before = snapshot()
    assert client.post(f"{o}/keys/{acme.owner_key.pk}/revoke/").status_code == 403
    assert client.post(f"{o}/keys/{acme.owner_key.pk}/update/", {"name": "x"}).status_code == 403
    assert snapshot() == before
    page = client.get(f"{o}/keys/{acme.owner_key.pk}/").content.decode()
    assert "/revoke/" not in page
    response = client.post(f"{o}/keys/{acme.developer_key.pk}/revoke/")
    assert response.status_code == 302
    acme.developer_key.refresh_from_db()
    assert acme.developer_key.revoked_at is not None


def test_department_admin_cannot_act_outside_the_department(world):
    """An admin of one department: a node elsewhere in the org is visible (403 to change)."""
    acme, _ = world
    from orgs import services
    from tests.console.factories import SYSTEM

    sales = services.node_create(actor=SYSTEM, parent=acme.tree.root, name="Sales", slug="sales")
    client = client_for(acme.admin)
    o = f"/o/{acme.tree.org.slug}"
    before = snapshot()
    response = client.post(f"{o}/nodes/{sales.pk}/rename/", {"name": "Mine", "slug": "mine"})
    assert response.status_code == 403
    response = client.post(f"{o}/tree/", {"parent": sales.pk, "name": "T", "slug": "t"})
    assert response.status_code == 400  # not among the parents offered to this admin
    response = client.post(f"{o}/settings/", {"name": "Hijack", "time_zone": "UTC"})
    assert response.status_code == 403  # organization-wide settings need a root role
    assert snapshot() == before
    # ...while inside the department the same admin may act.
    response = client.post(
        f"{o}/tree/", {"parent": acme.tree.dept.pk, "name": "Infra", "slug": "infra"}
    )
    assert response.status_code == 302
    assert Node.objects.filter(parent=acme.tree.dept, slug="infra").count() == 1
