"""Console pages with the Django test client: each change goes through the orgs services and
shows up exactly; bad input comes back as field errors with nothing changed."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.core import mail
from django.test import Client

from orgs.keys import KeyRejected, default_resolver
from orgs.models import ApiKey, AuditEvent, Invitation, Membership, Node, Organization, Role
from tests.console.factories import (
    DeploymentFactory,
    ModelFactory,
    ProviderFactory,
    Tenant,
    UserFactory,
    make_tenant,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme() -> Tenant:
    return make_tenant("acme")


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def flashes(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# -- authentication -------------------------------------------------------------------------


def test_login_with_password_lands_on_the_only_organization(acme):
    user = acme.tree.owner
    user.set_password("s3cret-passphrase")
    user.save()
    client = Client()
    response = client.post("/login/", {"username": user.username, "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    response = client.post(
        "/login/", {"username": user.username, "password": "s3cret-passphrase"}, follow=True
    )
    assert response.redirect_chain == [("/", 302), ("/o/acme/", 302)]
    assert response.context["org"] == acme.tree.org


def test_home_without_organization_shows_the_list_with_an_empty_state():
    client = login(UserFactory())
    response = client.get("/", follow=True)
    assert response.redirect_chain == [("/orgs/", 302)]
    assert "You are not in any organization yet" in response.content.decode()


def test_logout_is_a_post_and_ends_the_session(acme):
    client = login(acme.tree.owner)
    response = client.post("/logout/")
    assert (response.status_code, response["Location"]) == (302, "/login/")
    assert client.get("/o/acme/")["Location"] == "/login/?next=/o/acme/"


def test_password_reset_emails_a_link_that_sets_the_password(acme):
    user = acme.tree.owner
    user.set_password("the old passphrase")  # unusable passwords get no reset email
    user.save()
    client = Client()
    response = client.post("/password-reset/", {"email": user.email})
    assert response["Location"] == "/password-reset/sent/"
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/password-reset/\S+/\S+/)", mail.outbox[0].body).group(1)
    response = client.get(link, follow=True)  # Django swaps the token for a session marker
    assert response.context["validlink"] is True
    url = response.redirect_chain[-1][0]
    response = client.post(
        url, {"new_password1": "a brand new passphrase", "new_password2": "a brand new passphrase"}
    )
    assert response["Location"] == "/password-reset/complete/"
    user.refresh_from_db()
    assert user.check_password("a brand new passphrase")


# -- organizations and the tree ---------------------------------------------------------------


def test_create_organization_makes_the_user_its_owner():
    user = UserFactory()
    client = login(user)
    response = client.post(
        "/orgs/", {"name": "Globex", "slug": "globex", "time_zone": "Europe/Berlin"}
    )
    assert response["Location"] == "/o/globex/"
    org = Organization.objects.get(slug="globex")
    assert (org.name, org.time_zone) == ("Globex", "Europe/Berlin")
    m = Membership.objects.get(organization=org)
    assert (m.user_id, m.role, m.node.parent_id) == (user.pk, Role.OWNER, None)
    response = client.post("/orgs/", {"name": "Again", "slug": "globex", "time_zone": "UTC"})
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "slug": ["An organization with this slug already exists."]
    }
    assert Organization.objects.filter(slug="globex").count() == 1


def test_settings_update(acme):
    client = login(acme.tree.owner)
    response = client.post("/o/acme/settings/", {"name": "Acme Corp", "time_zone": "Asia/Tokyo"})
    assert response["Location"] == "/o/acme/settings/"
    acme.tree.org.refresh_from_db()
    assert (acme.tree.org.name, acme.tree.org.time_zone) == ("Acme Corp", "Asia/Tokyo")
    response = client.post("/o/acme/settings/", {"name": "", "time_zone": "Mars/Olympus"})
    assert response.status_code == 400
    assert set(response.context["form"].errors) == {"name", "time_zone"}


def test_archive_organization_owner_only(acme):
    org = acme.tree.org
    # an admin (not an owner) at the department has no organization-wide manage_node: 403
    assert (
        login(acme.admin).post("/o/acme/settings/archive/", {"revoke_keys": "on"}).status_code
        == 403
    )
    client = login(acme.tree.owner)
    response = client.post("/o/acme/settings/archive/", {})
    assert response.status_code == 400
    assert response.context["archive_form"].errors == {
        "revoke_keys": [
            "2 active API key(s) belong to this organization; "
            "pass revoke_keys=true to revoke them with it."
        ]
    }
    org.refresh_from_db()
    assert org.archived_at is None
    response = client.post("/o/acme/settings/archive/", {"revoke_keys": "on"}, follow=True)
    assert response.redirect_chain == [("/orgs/", 302)]
    assert flashes(response) == ["Acme archived and 2 API key(s) revoked."]
    org.refresh_from_db()
    assert org.archived_at is not None
    assert client.get("/o/acme/").status_code == 404  # gone from the owner's organizations


def test_tree_create_rename_move_archive(acme):
    client = login(acme.tree.owner)
    t = acme.tree
    response = client.post("/o/acme/tree/", {"parent": t.dept.pk, "name": "Data", "slug": "data"})
    assert response["Location"] == "/o/acme/tree/"
    team = Node.objects.get(parent=t.dept, slug="data")
    assert (team.kind, team.name, team.path) == ("team", "Data", f"{t.dept.path}{team.pk}/")
    assert flashes(client.get("/o/acme/tree/")) == ["Team Data created in Engineering."]

    # duplicate sibling slug: a field error, nothing created
    before = Node.objects.count()
    response = client.post("/o/acme/tree/", {"parent": t.dept.pk, "name": "D2", "slug": "data"})
    assert response.status_code == 400
    assert response.context["form"].errors == {"slug": ["A sibling with this slug already exists."]}
    assert Node.objects.count() == before

    response = client.post(
        f"/o/acme/nodes/{team.pk}/rename/", {"name": "Data Science", "slug": "ds"}
    )
    assert response["Location"] == f"/o/acme/nodes/{team.pk}/"
    team.refresh_from_db()
    assert (team.name, team.slug) == ("Data Science", "ds")

    response = client.post(f"/o/acme/nodes/{team.pk}/move/", {"parent": acme.other_dept.pk})
    assert response.status_code == 302
    team.refresh_from_db()
    assert (team.parent_id, team.path) == (acme.other_dept.pk, f"{acme.other_dept.path}{team.pk}/")
    # a project cannot go under a department: not among the choices
    response = client.post(f"/o/acme/nodes/{t.project.pk}/move/", {"parent": t.dept.pk})
    assert response.status_code == 400
    t.project.refresh_from_db()
    assert t.project.parent_id == t.team.pk

    # archiving a project with live keys needs the box ticked
    response = client.post(f"/o/acme/nodes/{t.project.pk}/archive/", {})
    assert response.status_code == 400
    assert "2 active API key(s) belong to this subtree" in response.content.decode()
    assert Node.objects.get(pk=t.project.pk).archived_at is None
    response = client.post(f"/o/acme/nodes/{t.project.pk}/archive/", {"revoke_keys": "on"})
    assert response["Location"] == "/o/acme/tree/"
    assert Node.objects.get(pk=t.project.pk).archived_at is not None
    assert ApiKey.objects.filter(project=t.project, revoked_at__isnull=True).count() == 0
    page = client.get("/o/acme/tree/").content.decode()
    assert "Archived Gateway with its subtree and revoked 2 API key(s)." in page
    assert f"/o/acme/nodes/{t.project.pk}/" not in page  # hidden unless asked
    assert (
        f"/o/acme/nodes/{t.project.pk}/" in client.get("/o/acme/tree/?archived=1").content.decode()
    )


# -- members and invitations ------------------------------------------------------------------


def test_members_add_change_role_remove(acme):
    client = login(acme.tree.owner)
    newcomer = UserFactory(username="newcomer")
    response = client.post(
        "/o/acme/members/", {"username": "newcomer", "node": acme.tree.team.pk, "role": "viewer"}
    )
    assert response["Location"] == "/o/acme/members/"
    m = Membership.objects.get(user=newcomer, removed_at__isnull=True)
    assert (m.node_id, m.role) == (acme.tree.team.pk, "viewer")

    response = client.post(
        "/o/acme/members/", {"username": "nobody", "node": acme.tree.team.pk, "role": "viewer"}
    )
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "username": ["No active user has this username; send an invitation instead."]
    }

    response = client.post(f"/o/acme/members/{m.pk}/role/", {f"m{m.pk}-role": "admin"}, follow=True)
    assert flashes(response) == ["newcomer is now admin of Platform."]
    m.refresh_from_db()
    assert m.role == "admin"
    response = client.post(f"/o/acme/members/{m.pk}/remove/", follow=True)
    assert flashes(response) == ["newcomer removed from Platform."]
    m.refresh_from_db()
    assert m.removed_at is not None

    # the last owner stays: the service's refusal is shown, nothing changes
    owner_m = acme.tree.owner_membership
    response = client.post(f"/o/acme/members/{owner_m.pk}/remove/", follow=True)
    assert flashes(response) == ["The organization's last owner cannot be removed."]
    owner_m.refresh_from_db()
    assert owner_m.removed_at is None


def test_members_search_role_filter_and_pagination(acme):
    from tests.console.factories import add_member

    for i in range(30):
        add_member(acme.tree.team, Role.VIEWER, UserFactory(username=f"bulk{i:02d}"))
    client = login(acme.tree.owner)
    response = client.get("/o/acme/members/?role=viewer")
    page = response.context["page"]
    assert (page.paginator.count, len(page.object_list)) == (31, 25)  # 30 + acme-viewer
    response = client.get("/o/acme/members/?role=viewer&page=2")
    assert len(response.context["page"].object_list) == 6
    assert 'href="?role=viewer&amp;page=1"' in response.content.decode()
    response = client.get("/o/acme/members/?q=bulk0")
    assert [r["m"].user.username for r in response.context["rows"]] == [
        f"bulk0{i}" for i in range(10)
    ]


def test_invitation_create_email_accept_and_revoke(acme, django_capture_on_commit_callbacks):
    client = login(acme.tree.owner)
    with django_capture_on_commit_callbacks(execute=True):  # the email goes after commit
        response = client.post(
            "/o/acme/invitations/",
            {
                "email": "Dana@Example.com",
                "node": acme.tree.project.pk,
                "role": "developer",
                "ttl_hours": 48,
            },
        )
    assert response["Location"] == "/o/acme/invitations/"
    inv = Invitation.objects.get(email="dana@example.com")
    assert (inv.node_id, inv.role, inv.invited_by_id) == (
        acme.tree.project.pk,
        "developer",
        acme.tree.owner.pk,
    )
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    token = re.search(r"mri_[\w-]+", body).group(0)
    assert f"{settings.MEGAROUTER_PUBLIC_URL}/invitations/{token}/" in body
    assert "POST /api/" not in body

    bad = client.post(
        "/o/acme/invitations/",
        {
            "email": "not-an-email",
            "node": acme.tree.project.pk,
            "role": "developer",
            "ttl_hours": 0,
        },
    )
    assert bad.status_code == 400
    assert set(bad.context["form"].errors) == {"email", "ttl_hours"}

    dana = UserFactory(username="dana", email="dana@example.com")
    other = UserFactory(username="eve", email="eve@example.com")
    response = login(other).post(f"/invitations/{token}/")
    assert response.status_code == 403
    assert "This invitation was sent to another email address" in response.content.decode()
    response = login(dana).post(f"/invitations/{token}/")
    assert response["Location"] == "/o/acme/"
    m = Membership.objects.get(user=dana)
    assert (m.node_id, m.role) == (acme.tree.project.pk, "developer")

    # the fixture's pending invitation is revoked from the list
    response = client.post(f"/o/acme/invitations/{acme.invitation.pk}/revoke/", follow=True)
    assert flashes(response) == ["Invitation for new@acme.example revoked."]
    statuses = {r["inv"].email: r["status"] for r in response.context["rows"]}
    assert statuses == {"dana@example.com": "accepted", "new@acme.example": "revoked"}


# -- API keys -------------------------------------------------------------------------------


def test_key_create_shows_the_secret_once_and_it_works(acme):
    client = login(acme.developer)
    response = client.post(
        "/o/acme/keys/new/",
        {
            "project": acme.tree.project.pk,
            "name": "ci",
            "allowed_models": "openai/*\nanthropic/claude-3-5-haiku",
            "rpm_limit": "120",
            "tpm_limit": "",
            "ip_allowlist": "10.0.0.0/8",
        },
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    raw = response.context["raw_key"]
    key = ApiKey.objects.get(name="ci")
    assert raw.startswith(key.prefix)
    assert (key.allowed_models, key.rpm_limit, key.tpm_limit, key.ip_allowlist) == (
        ["openai/*", "anthropic/claude-3-5-haiku"],
        120,
        None,
        ["10.0.0.0/8"],
    )
    assert key.membership_id == acme.developer_membership.pk
    ctx = default_resolver.resolve_sync(raw)
    assert (ctx.project_id, ctx.key_id) == (acme.tree.project.pk, key.pk)
    detail = client.get(f"/o/acme/keys/{key.pk}/").content.decode()
    assert raw not in detail
    assert key.prefix in detail


def test_key_create_field_errors(acme):
    client = login(acme.tree.owner)
    before = ApiKey.objects.count()
    response = client.post(
        "/o/acme/keys/new/",
        {
            "project": acme.tree.project.pk,
            "name": "x",
            "ip_allowlist": "not-an-ip",
            "rpm_limit": "0",
        },
    )
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "rpm_limit": ["Ensure this value is greater than or equal to 1."]
    }
    response = client.post(
        "/o/acme/keys/new/",
        {"project": acme.tree.project.pk, "name": "x", "ip_allowlist": "not-an-ip"},
    )
    assert response.context["form"].errors == {
        "ip_allowlist": ["Enter a list of IP addresses or CIDR networks."]
    }
    assert 'aria-invalid="true"' in response.content.decode()
    assert ApiKey.objects.count() == before


def test_key_update_rotate_revoke(acme, django_capture_on_commit_callbacks):
    client = login(acme.tree.owner)
    key = acme.owner_key
    response = client.post(
        f"/o/acme/keys/{key.pk}/update/",
        {"name": "renamed", "allowed_models": "openai/gpt-4o-mini", "tpm_limit": "5000"},
    )
    assert response["Location"] == f"/o/acme/keys/{key.pk}/"
    key.refresh_from_db()
    assert (key.name, key.allowed_models, key.rpm_limit, key.tpm_limit) == (
        "renamed",
        ["openai/gpt-4o-mini"],
        None,
        5000,
    )
    old_prefix = key.prefix
    response = client.post(f"/o/acme/keys/{key.pk}/rotate/", {"grace_hours": "0"})
    assert response.status_code == 200
    new_raw = response.context["raw_key"]
    key.refresh_from_db()
    assert key.prefix != old_prefix and new_raw.startswith(key.prefix)
    assert default_resolver.resolve_sync(new_raw).key_id == key.pk
    response = client.post(f"/o/acme/keys/{key.pk}/rotate/", {"grace_hours": "9999"})
    assert response.status_code == 400
    assert "grace_hours" in response.context["rotate_form"].errors

    with django_capture_on_commit_callbacks(execute=True):  # cache invalidation after commit
        response = client.post(f"/o/acme/keys/{key.pk}/revoke/", follow=True)
    assert flashes(response) == ["Revoked renamed. It stops working within seconds."]
    key.refresh_from_db()
    assert key.revoked_reason == "revoked"
    default_resolver.forget()
    with pytest.raises(KeyRejected):
        default_resolver.resolve_sync(new_raw)
    response = client.post(f"/o/acme/keys/{key.pk}/revoke/", follow=True)
    assert flashes(response) == ["This key is already revoked."]


def test_keys_list_filters_and_query_count(acme, django_assert_max_num_queries):
    client = login(acme.tree.owner)
    from tests.console.factories import make_key

    for i in range(12):
        make_key(acme.tree.project, acme.tree.owner_membership, name=f"bulk {i}")
    with django_assert_max_num_queries(12):
        response = client.get("/o/acme/keys/")
    assert response.context["page"].paginator.count == 14
    response = client.get("/o/acme/keys/?q=bulk 1")
    assert sorted(r["key"].name for r in response.context["rows"]) == [
        "bulk 1",
        "bulk 10",
        "bulk 11",
    ]
    client.post(f"/o/acme/keys/{acme.owner_key.pk}/revoke/")
    response = client.get("/o/acme/keys/?status=revoked")
    assert [r["key"].name for r in response.context["rows"]] == ["owner key"]


def test_keys_show_spend_last_use_and_budget_to_billing_viewers_and_sort(acme):
    from billing import services as billing_services
    from orgs.audit import Actor
    from tests.console.factories import spend

    t = acme.tree
    billing_services.budget_create(
        actor=Actor.system(),
        organization=t.org,
        scope="key",
        scope_id=acme.developer_key.pk,
        period="monthly",
        limit_usd="0.000001",  # a tiny budget reads as itself, not $0.00
        mode="alert",  # counts, does not block
    )
    spend(t.project, acme.developer_membership, acme.developer_key, "0.40")
    spend(t.project, acme.developer_membership, acme.developer_key, "0.000002")
    spend(t.project, t.owner_membership, acme.owner_key, "1.25")
    viewer = login(acme.viewer)  # viewers hold view_billing at the root
    response = viewer.get("/o/acme/keys/?sort=spend")
    rows = response.context["rows"]
    assert [r["key"].name for r in rows] == ["owner key", "dev key"]  # dearest first
    dev = rows[1]["figures"]
    assert (dev["spend"], dev["requests"]) == (Decimal("0.400002"), 2)
    assert dev["last_used"] is not None
    assert dev["budget"]["spent"] == Decimal("0.400002")
    html = response.content.decode()
    assert "Spend this month" in html and "$0.40 of $0.000001" in html
    assert [r["key"].name for r in viewer.get("/o/acme/keys/?sort=name").context["rows"]] == [
        "dev key",
        "owner key",
    ]
    # a developer (no view_billing) sees the keys, not the money, and cannot sort by it
    developer = login(acme.developer).get("/o/acme/keys/?sort=spend")
    assert developer.context["money"] is False and developer.context["sort"] == ""
    assert "Spend this month" not in developer.content.decode()
    assert all(r["figures"] is None for r in developer.context["rows"])


# -- catalog, deployments, audit ----------------------------------------------------------------


def test_models_search_filters_and_prices(acme):
    openai = ProviderFactory(slug="openai", name="OpenAI")
    anthropic = ProviderFactory(slug="anthropic", name="Anthropic")
    mini = ModelFactory(
        provider=openai,
        provider_model_name="gpt-4o-mini",
        supports_tools=True,
        supports_vision=True,
        price=(Decimal("0.00000015"), Decimal("0.0000006")),
    )
    ModelFactory(provider=openai, provider_model_name="text-embedding-3-small", mode="embedding")
    ModelFactory(provider=anthropic, provider_model_name="claude-3-5-haiku", supports_tools=True)
    DeploymentFactory(model=mini)
    client = login(acme.viewer)

    def ids(query: str) -> list[str]:
        response = client.get(f"/o/acme/models/{query}")
        return [r["m"].canonical_id for r in response.context["rows"]]

    assert ids("") == [
        "anthropic/claude-3-5-haiku",
        "openai/gpt-4o-mini",
        "openai/text-embedding-3-small",
    ]
    assert ids("?provider=openai") == ["openai/gpt-4o-mini", "openai/text-embedding-3-small"]
    assert ids("?cap=tools&cap=vision") == ["openai/gpt-4o-mini"]
    assert ids("?mode=embedding") == ["openai/text-embedding-3-small"]
    assert ids("?q=haiku") == ["anthropic/claude-3-5-haiku"]
    row = client.get("/o/acme/models/?q=mini").context["rows"][0]
    assert (row["input"], row["output"], row["caps"]) == (
        Decimal("0.15"),
        Decimal("0.6"),
        ["Tools", "Vision"],
    )
    assert row["m"].deployment_count == 1
    detail = client.get(f"/o/acme/models/{mini.pk}/")
    assert detail.status_code == 200
    assert [(h["input"], h["output"]) for h in detail.context["history"]] == [
        (Decimal("0.15"), Decimal("0.6"))
    ]


def test_deployments_hide_credential_names_from_non_admins(acme):
    from routing import services as routing_services
    from routing.crypto import CredentialSecret

    cred, _ = routing_services.credential_upsert(
        name="openai-prod", kind="api_key", secret=CredentialSecret(api_key="sk-x")
    )
    DeploymentFactory(name="mini-eu", region="eu-west-1", credential=cred)
    viewer_page = login(acme.viewer).get("/o/acme/deployments/").content.decode()
    owner_page = login(acme.tree.owner).get("/o/acme/deployments/").content.decode()
    assert "mini-eu" in viewer_page and "mini-eu" in owner_page
    assert "openai-prod" not in viewer_page
    assert "openai-prod" in owner_page
    assert "sk-x" not in owner_page


def test_audit_log_filters_and_export_link(acme):
    client = login(acme.tree.owner)
    response = client.get("/o/acme/audit/?action=api_key.create&since=2020-01-01&until=2999-12-31")
    rows = response.context["page"].object_list
    assert [e.target_repr.split(" (")[0] for e in rows] == ["dev key", "owner key"]
    assert response.context["export_url"] == (
        "/api/orgs/acme/audit-events/export/?action=api_key.create"
        "&since=2020-01-01T00%3A00%3A00%2B00%3A00&until=3000-01-01T00%3A00%3A00%2B00%3A00"
    )
    export = client.get(response.context["export_url"])
    lines = b"".join(export.streaming_content).decode().strip().splitlines()
    assert len(lines) == 3  # header + the two key creations
    assert (
        AuditEvent.objects.filter(organization=acme.tree.org, action="api_key.create").count() == 2
    )


def test_overview_counts(acme):
    response = login(acme.tree.owner).get("/o/acme/")
    assert response.context["counts"] == {
        "departments": 2,
        "teams": 1,
        "projects": 1,
        "members": 4,
        "keys": 2,
    }
    # a developer of the project sees only what their role shows
    response = login(acme.developer).get("/o/acme/")
    assert response.context["counts"] == {
        "departments": 0,
        "teams": 0,
        "projects": 1,
        "members": 1,
        "keys": 2,
    }
    assert response.context["recent"] is None
