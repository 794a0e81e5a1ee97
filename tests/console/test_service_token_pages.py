"""The console's service tokens page (console/views/service_tokens.py): list with last use,
create with the secret shown once, change the expiry, revoke; form errors, roles and tenancy."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import time_machine
from django.test import Client

from orgs import services
from orgs.models import AuditEvent, NodeUserPermission, Role, ServiceToken
from tests.console.factories import SYSTEM, Tenant, add_member, make_tenant
from tests.orgs.test_api_isolation import snapshot

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 5, 4, 9, 30, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def acme() -> Tenant:
    return make_tenant("acme")


@pytest.fixture
def globex() -> Tenant:
    return make_tenant("globex")


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def mint(node: Any, scopes: list[str], name: str = "bot") -> ServiceToken:
    return services.service_token_create(actor=SYSTEM, node=node, name=name, scopes=scopes).token


def test_create_shows_the_secret_once_and_the_list_shows_last_use(acme):
    client = login(acme.tree.owner)
    page = client.get("/o/acme/service-tokens/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/o/acme/service-tokens/" aria-current="page"' in html  # the sidebar entry
    assert 'value="budgets:write"' in html and "No service tokens yet" in html
    response = client.post(
        "/o/acme/service-tokens/",
        {
            "name": "terraform",
            "node": acme.tree.team.pk,
            "scopes": ["budgets:read", "budgets:write"],
            "expires_at": "2026-06-01T12:00",
        },
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    raw = re.search(r'value="(mrs_[\w-]+)"', response.content.decode()).group(1)
    token = ServiceToken.objects.get()
    assert (token.name, token.node, token.scopes, token.created_by) == (
        "terraform",
        acme.tree.team,
        ["budgets:read", "budgets:write"],
        acme.tree.owner,
    )
    assert token.expires_at == dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
    api = Client(HTTP_AUTHORIZATION=f"Token {raw}")
    assert api.get("/api/orgs/acme/budgets/").status_code == 200
    listing = client.get("/o/acme/service-tokens/").content.decode()
    assert raw not in listing
    assert "terraform" in listing and "2026-05-04 09:30" in listing  # last used
    assert "<code>budgets:write</code>" in listing
    event = AuditEvent.objects.get(action="service_token.create")
    assert event.actor == acme.tree.owner


def test_bad_input_gives_form_errors_and_creates_nothing(acme):
    client = login(acme.tree.owner)
    response = client.post(
        "/o/acme/service-tokens/",
        {"name": "", "node": acme.tree.team.pk, "scopes": [], "expires_at": "2026-05-01T00:00"},
    )
    assert response.status_code == 400
    form = response.context["form"]
    assert form.errors["name"] == ["This field is required."]
    assert form.errors["scopes"] == ["This field is required."]
    response = client.post(
        "/o/acme/service-tokens/",
        {
            "name": "x",
            "node": acme.tree.team.pk,
            "scopes": ["keys:read"],
            "expires_at": "2026-05-01T00:00",
        },
    )
    assert response.status_code == 400
    assert response.context["form"].errors["expires_at"] == ["The expiry must be in the future."]
    response = client.post(
        "/o/acme/service-tokens/",
        {"name": "x", "node": acme.tree.team.pk, "scopes": ["root:all"]},
    )
    assert response.status_code == 400 and "scopes" in response.context["form"].errors
    assert ServiceToken.objects.count() == 0


def test_a_scope_beyond_the_creators_role_is_a_form_error(acme):
    admin = acme.admin  # admin of the department
    NodeUserPermission.objects.filter(
        user=admin, permission__codename="manage_billing", content_object=acme.tree.dept
    ).delete()
    response = login(admin).post(
        "/o/acme/service-tokens/",
        {"name": "x", "node": acme.tree.team.pk, "scopes": ["budgets:write"]},
    )
    assert response.status_code == 400
    assert response.context["form"].errors["scopes"] == [
        "Your role on this node does not cover the scope(s) budgets:write; a token can hold "
        "only what its creator may do."
    ]
    assert ServiceToken.objects.count() == 0


def test_expiry_change_and_revoke(acme):
    token = mint(acme.tree.team, ["keys:read"])
    client = login(acme.tree.owner)
    response = client.post(
        f"/o/acme/service-tokens/{token.pk}/expiry/",
        {f"t{token.pk}-expires_at": "2026-07-01T08:00"},
    )
    assert response["Location"] == "/o/acme/service-tokens/"
    token.refresh_from_db()
    assert token.expires_at == dt.datetime(2026, 7, 1, 8, tzinfo=dt.UTC)
    response = client.post(
        f"/o/acme/service-tokens/{token.pk}/expiry/",
        {f"t{token.pk}-expires_at": "2026-01-01T08:00"},
    )
    token.refresh_from_db()
    assert token.expires_at == dt.datetime(2026, 7, 1, 8, tzinfo=dt.UTC)  # unchanged
    messages = [str(m) for m in client.get("/o/acme/service-tokens/").context["messages"]]
    assert messages == ["Expiry of service token bot saved.", "The expiry must be in the future."]
    response = client.post(f"/o/acme/service-tokens/{token.pk}/revoke/")
    assert response["Location"] == "/o/acme/service-tokens/"
    token.refresh_from_db()
    assert token.revoked_at == NOW
    page = client.get("/o/acme/service-tokens/").content.decode()
    assert '<span class="badge revoked">Revoked</span>' in page
    assert f"/o/acme/service-tokens/{token.pk}/revoke/" not in page
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="service_token.")] == [
        "service_token.revoke",
        "service_token.update",
        "service_token.create",
    ]
    assert client.post(f"/o/acme/service-tokens/{token.pk}/delete/").status_code == 404


def test_roles_a_developer_is_refused_and_an_admin_sees_only_their_subtree(acme):
    root_token = mint(acme.tree.root, ["audit:read"], name="org-wide")
    mint(acme.tree.team, ["keys:read"], name="team-bot")
    assert login(acme.developer).get("/o/acme/service-tokens/").status_code == 403
    assert "/o/acme/service-tokens/" not in login(acme.developer).get("/o/acme/").content.decode()
    client = login(acme.admin)
    page = client.get("/o/acme/service-tokens/")
    rows = [row["token"].name for row in page.context["rows"]]
    assert rows == ["team-bot"]
    assert client.post(f"/o/acme/service-tokens/{root_token.pk}/revoke/").status_code == 403
    response = client.post(
        "/o/acme/service-tokens/",
        {"name": "x", "node": acme.tree.root.pk, "scopes": ["keys:read"]},
    )
    assert response.status_code == 400 and "node" in response.context["form"].errors
    root_token.refresh_from_db()
    assert root_token.revoked_at is None


def test_another_tenants_tokens_are_404_and_unchanged(acme, globex):
    theirs = mint(globex.tree.root, ["keys:read"], name="theirs")
    client = login(acme.tree.owner)
    assert client.get("/o/globex/service-tokens/").status_code == 404
    before = snapshot()
    assert client.post(f"/o/acme/service-tokens/{theirs.pk}/revoke/").status_code == 404
    response = client.post(
        f"/o/acme/service-tokens/{theirs.pk}/expiry/", {f"t{theirs.pk}-expires_at": ""}
    )
    assert response.status_code == 404
    response = client.post(
        "/o/acme/service-tokens/",
        {"name": "x", "node": globex.tree.team.pk, "scopes": ["keys:read"]},
    )
    assert response.status_code == 400 and "node" in response.context["form"].errors
    assert snapshot() == before
    theirs.refresh_from_db()
    assert theirs.revoked_at is None and ServiceToken.objects.count() == 1
    add_member(globex.tree.team, Role.ADMIN, acme.developer)
    page = login(acme.developer).get("/o/globex/service-tokens/")
    assert [row["token"].name for row in page.context["rows"]] == []


def test_what_a_token_does_reads_as_the_token_in_the_audit_log(acme):
    raw = services.service_token_create(
        actor=SYSTEM, node=acme.tree.root, name="finops", scopes=["budgets:write"]
    ).raw_token
    api = Client(HTTP_AUTHORIZATION=f"Token {raw}")
    response = api.patch(
        f"/api/orgs/acme/budgets/{acme.budget.pk}/",
        '{"limit_usd": "12.00"}',
        content_type="application/json",
    )
    assert response.status_code == 200
    lines = login(acme.tree.owner).get("/o/acme/audit/?action=budget.update").context["lines"]
    prefix = ServiceToken.objects.get().prefix
    assert lines[0].text == (
        f"The service token finops ({prefix}) set the monthly budget of the project "
        "Engineering \u203a Platform \u203a Gateway to $12.00 (was $10.00)"
    )


def test_the_list_filters_with_the_apis_declarations(acme):
    mint(acme.tree.team, ["keys:read"], name="terraform")
    gone = mint(acme.tree.team, ["keys:read"], name="old-ci")
    services.service_token_revoke(actor=SYSTEM, token=gone)
    client = login(acme.tree.owner)

    def names(query: str) -> list[str]:
        page = client.get(f"/o/acme/service-tokens/?{query}")
        return [row["token"].name for row in page.context["rows"]]

    assert names("") == ["old-ci", "terraform"]
    assert names("revoked=false") == ["terraform"]
    assert names("revoked=true") == ["old-ci"]
    assert names("q=terra") == ["terraform"]
    page = client.get("/o/acme/service-tokens/?revoked=maybe")
    assert [str(m) for m in page.context["messages"]] == ["revoked: Expected a boolean."]
