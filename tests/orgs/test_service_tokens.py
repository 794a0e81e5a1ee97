"""Service tokens (orgs.models.ServiceToken): the organization's scoped tokens for the
management API. The service rules (no privilege escalation, audit), authentication (expiry,
revocation), the scope check of the choke point on every route of the OpenAPI schema, node
limits, and tenancy."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import resolve
from drf_spectacular.generators import SchemaGenerator
from rest_framework.permissions import SAFE_METHODS
from rest_framework.test import APIClient

from billing import services as billing_services
from billing.models import Budget
from orgs import secrets, services
from orgs.api.base import ManagementAPIMixin, OrgScopedViewSet
from orgs.audit import Actor
from orgs.errors import InvalidInput, NotAllowed
from orgs.models import ApiKey, AuditEvent, Membership, NodeUserPermission, Role, ServiceToken
from orgs.roles import SCOPE_DESCRIPTIONS, SCOPE_PERMISSIONS, SCOPES
from tests.orgs.factories import SYSTEM, UserFactory, add_member, make_key, make_tree
from tests.orgs.test_api_isolation import snapshot

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 5, 4, 9, 30, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def t():
    return make_tree("alpha")


@pytest.fixture
def other():
    return make_tree("beta")


def mint(node: Any, scopes: list[str] | tuple[str, ...], **kw: Any) -> tuple[ServiceToken, str]:
    created = services.service_token_create(
        actor=SYSTEM, node=node, name=kw.pop("name", "bot"), scopes=list(scopes), **kw
    )
    return created.token, created.raw_token


def client_for(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def owner_client(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


# -- the scopes ---------------------------------------------------------------------------


def test_every_scope_is_documented_and_grants_known_permissions():
    assert set(SCOPE_DESCRIPTIONS) == set(SCOPES)
    assert all(re.fullmatch(r"[a-z-]+:(read|write)", s) for s in SCOPES)
    with open("docs/management-api.md") as f:
        doc = f.read()
    assert [s for s in SCOPES if f"`{s}`" not in doc] == []


# -- the service -----------------------------------------------------------------------------


def test_create_stores_a_digest_shows_the_raw_token_once_and_is_audited(t):
    owner = Actor(user=t.owner, ip="192.0.2.1")
    created = services.service_token_create(
        actor=owner,
        node=t.team,
        name="  terraform ",
        scopes=["keys:read", "budgets:write", "keys:read"],
        expires_at=NOW + dt.timedelta(days=7),
    )
    token = created.token
    assert created.raw_token.startswith("mrs_") and token.prefix == created.raw_token[:16]
    assert secrets.matches(created.raw_token, token.digest)
    assert created.raw_token not in token.digest
    assert token.name == "terraform" and token.node == t.team and token.created_by == t.owner
    assert token.scopes == ["keys:read", "budgets:write"]  # documented order, no repeats
    event = AuditEvent.objects.get(action="service_token.create")
    assert event.actor == t.owner and event.target_id == str(token.pk)
    assert event.changes == {
        "name": "terraform",
        "node": t.team.pk,
        "scopes": ["keys:read", "budgets:write"],
        "expires_at": (NOW + dt.timedelta(days=7)).isoformat(),
    }
    assert created.raw_token not in str(event.changes) + event.target_repr


def test_bad_input_is_refused_with_field_errors_and_nothing_changes(t):
    before = snapshot()
    with pytest.raises(InvalidInput) as exc:
        services.service_token_create(
            actor=SYSTEM, node=t.team, name=" ", scopes=[], expires_at=NOW - dt.timedelta(1)
        )
    assert exc.value.errors == {
        "name": ["This field may not be blank."],
        "scopes": ["Choose at least one scope."],
        "expires_at": ["The expiry must be in the future."],
    }
    with pytest.raises(InvalidInput) as exc:
        services.service_token_create(actor=SYSTEM, node=t.team, name="x", scopes=["root:all"])
    assert exc.value.errors == {"scopes": ["Unknown scope(s): root:all."]}
    assert snapshot() == before and ServiceToken.objects.count() == 0


def test_no_privilege_escalation_a_creator_hands_out_only_what_they_hold_there(t):
    dept_admin = add_member(t.dept, Role.ADMIN).user
    developer = add_member(t.project, Role.DEVELOPER).user
    # an admin of the department: fine on their subtree, not at the root nor elsewhere
    services.service_token_create(
        actor=Actor(user=dept_admin), node=t.team, name="ok", scopes=["budgets:write"]
    )
    with pytest.raises(NotAllowed, match="managing service tokens here"):
        services.service_token_create(
            actor=Actor(user=dept_admin), node=t.root, name="no", scopes=["budgets:read"]
        )
    with pytest.raises(NotAllowed, match="managing service tokens here"):
        services.service_token_create(
            actor=Actor(user=developer), node=t.project, name="no", scopes=["keys:read"]
        )
    # a grant the role would give, taken away: the scope that needs it is refused by name
    NodeUserPermission.objects.filter(
        user=dept_admin, permission__codename="view_audit", content_object=t.dept
    ).delete()
    with pytest.raises(NotAllowed, match=r"does not cover the scope\(s\) audit:read;"):
        services.service_token_create(
            actor=Actor(user=dept_admin), node=t.team, name="no", scopes=["audit:read"]
        )
    # a token never mints a token
    bot, _raw = mint(t.root, SCOPES)
    with pytest.raises(NotAllowed, match="cannot create or change service tokens"):
        services.service_token_create(
            actor=Actor(service_token=bot), node=t.team, name="no", scopes=["keys:read"]
        )
    assert sorted(ServiceToken.objects.values_list("name", flat=True)) == ["bot", "ok"]


def test_expiry_changes_and_revocation_are_audited_once(t):
    token, _raw = mint(t.team, ["keys:read"], expires_at=NOW + dt.timedelta(days=1))
    actor = Actor(user=t.owner)
    services.service_token_update(actor=actor, token=token, expires_at=None)
    services.service_token_update(actor=actor, token=token, expires_at=None)  # no change
    with pytest.raises(InvalidInput) as exc:
        services.service_token_update(actor=actor, token=token, expires_at=NOW)
    assert exc.value.errors == {"expires_at": ["The expiry must be in the future."]}
    services.service_token_revoke(actor=actor, token=token)
    services.service_token_revoke(actor=actor, token=token)
    with pytest.raises(InvalidInput) as exc:
        services.service_token_update(
            actor=actor, token=token, expires_at=NOW + dt.timedelta(days=2)
        )
    assert exc.value.errors == {"expires_at": ["The token is revoked."]}
    events = AuditEvent.objects.filter(action__startswith="service_token.").order_by("id")
    assert [(e.action, e.changes) for e in events] == [
        (
            "service_token.create",
            {
                "name": "bot",
                "node": t.team.pk,
                "scopes": ["keys:read"],
                "expires_at": (NOW + dt.timedelta(days=1)).isoformat(),
            },
        ),
        ("service_token.update", {"expires_at": [(NOW + dt.timedelta(days=1)).isoformat(), None]}),
        ("service_token.revoke", {"name": "bot"}),
    ]
    token.refresh_from_db()
    assert token.revoked_at == NOW and token.expires_at is None


# -- authentication ----------------------------------------------------------------------------


def test_a_token_works_until_it_expires_or_is_revoked(t):
    token, raw = mint(t.root, ["nodes:read"], expires_at=NOW + dt.timedelta(hours=1))
    client = client_for(raw)
    assert client.get("/api/orgs/alpha/nodes/").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at == NOW
    with time_machine.travel(NOW + dt.timedelta(hours=1), tick=False):
        r = client.get("/api/orgs/alpha/nodes/")
    assert r.status_code == 401
    assert r.json() == {"detail": "This service token has expired.", "code": "token_expired"}
    services.service_token_update(actor=SYSTEM, token=token, expires_at=NOW + dt.timedelta(days=1))
    assert client.get("/api/orgs/alpha/nodes/").status_code == 200
    services.service_token_revoke(actor=SYSTEM, token=token)
    r = client.get("/api/orgs/alpha/nodes/")
    assert r.status_code == 401
    assert r.json() == {"detail": "This service token has been revoked.", "code": "token_revoked"}
    forged = raw[:-4] + ("aaaa" if not raw.endswith("aaaa") else "bbbb")
    r = client_for(forged).get("/api/orgs/alpha/nodes/")
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"


def test_a_token_stops_when_its_node_is_archived(t):
    _token, raw = mint(t.team, ["nodes:read"])
    services.node_archive(actor=SYSTEM, node=t.team)
    r = client_for(raw).get("/api/orgs/alpha/nodes/")
    assert r.status_code == 401 and r.json()["code"] == "token_archived"


# -- every route checks the scope ----------------------------------------------------------------

# Views that no service token may call: people's endpoints (their organizations, personal
# tokens, accepting an invitation) and the service tokens themselves (a token never mints or
# extends tokens).
PEOPLE_ONLY = {
    "OrganizationViewSet",
    "AccessTokenViewSet",
    "InvitationAcceptView",
    "ServiceTokenViewSet",
    # single sign-on is configured by an owner, a person (identity/api/views.py)
    "IdentityProviderViewSet",
    "GroupMappingViewSet",
}
# Not a management endpoint: the payment provider's webhook, authenticated by its signature.
NOT_MANAGEMENT = {"PaymentWebhookView"}


def schema_operations() -> list[tuple[str, str]]:
    """(path template, method) of every operation of the OpenAPI schema under /api/."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (path, method.upper())
        for path, item in schema["paths"].items()
        if path.startswith("/api/")
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def view_of(path: str) -> tuple[Any, dict[str, str]]:
    func = resolve(path).func
    cls = getattr(func, "cls", None) or func.view_class
    return cls, getattr(func, "actions", {}) or {}


def concrete(path: str, org: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: org if m.group(1) == "org_slug" else "1", path)


def test_every_management_route_is_guarded_by_a_scope_that_grants_its_permission(t):
    ops = schema_operations()
    assert len(ops) >= 60  # the scan sees the whole API
    _everything, raw_all = mint(t.root, SCOPES, name="everything")
    guarded: dict[str, str] = {}
    refused: set[str] = set()
    for template, method in ops:
        path = concrete(template, "alpha")
        cls, actions = view_of(path)
        if cls.__name__ in NOT_MANAGEMENT:
            assert not issubclass(cls, ManagementAPIMixin)
            continue
        assert issubclass(cls, ManagementAPIMixin), template
        where = f"{method} {template}"
        if cls.scope_resource is None:
            refused.add(cls.__name__)
            r = client_for(raw_all).generic(method, path, "{}", content_type="application/json")
            assert r.status_code == 403, where
            assert r.json()["code"] == "service_token_not_allowed", where
            continue
        assert issubclass(cls, OrgScopedViewSet), where
        scope = f"{cls.scope_resource}:{'read' if method in SAFE_METHODS else 'write'}"
        assert scope in SCOPES, where
        view = cls()
        view.action = actions[method.lower()]
        assert view.required_permission() in SCOPE_PERMISSIONS[scope], where
        guarded[where] = scope
        # every other scope: refused before the handler runs, the missing scope named
        _tok, raw = mint(t.root, [s for s in SCOPES if s != scope], name=f"no {scope}")
        r = client_for(raw).generic(method, path, "{}", content_type="application/json")
        assert r.status_code == 403, where
        assert r.json() == {
            "detail": f"This service token lacks the scope {scope}.",
            "code": "missing_scope",
        }, where
    assert refused == PEOPLE_ONLY
    assert {scope for scope in guarded.values()} == set(SCOPES)  # no scope guards nothing
    assert guarded["GET /api/orgs/{org_slug}/budgets/"] == "budgets:read"
    assert guarded["PATCH /api/orgs/{org_slug}/budgets/{id}/"] == "budgets:write"
    assert guarded["POST /api/orgs/{org_slug}/reports/"] == "reports:write"
    assert guarded["GET /api/orgs/{org_slug}/analytics/summary/"] == "analytics:read"


# -- what a token sees and does -------------------------------------------------------------------


def test_a_node_limited_token_sees_only_its_subtree(t):
    other_team = services.node_create(actor=SYSTEM, parent=t.dept, name="Data", slug="data")
    other_project = services.node_create(actor=SYSTEM, parent=other_team, name="ETL", slug="etl")
    make_key(t.project, t.owner_membership, name="mine")
    theirs = make_key(other_project, t.owner_membership, name="theirs").api_key
    _tok, raw = mint(t.team, ["nodes:read", "keys:read"])
    client = client_for(raw)
    nodes = client.get("/api/orgs/alpha/nodes/").json()["results"]
    assert sorted(n["name"] for n in nodes) == ["Gateway", "Platform"]
    keys = client.get("/api/orgs/alpha/keys/").json()["results"]
    assert [k["name"] for k in keys] == ["mine"]
    r = client.get(f"/api/orgs/alpha/keys/{theirs.pk}/")
    assert r.status_code == 403  # in the organization, outside the token's subtree
    r = client.get(f"/api/orgs/alpha/nodes/{t.root.pk}/")
    assert r.status_code == 403


def test_a_token_of_one_organization_never_reaches_another(t, other):
    b_key = make_key(other.project, other.owner_membership, name="b key").api_key
    _tok, raw = mint(t.root, SCOPES)
    client = client_for(raw)
    before = snapshot()
    assert client.get("/api/orgs/beta/keys/").status_code == 404
    assert client.get(f"/api/orgs/beta/keys/{b_key.pk}/").status_code == 404
    assert client.post(f"/api/orgs/beta/keys/{b_key.pk}/revoke/").status_code == 404
    assert client.get(f"/api/orgs/alpha/keys/{b_key.pk}/").status_code == 404
    assert client.post(f"/api/orgs/alpha/keys/{b_key.pk}/revoke/").status_code == 404
    assert client.get("/api/orgs/").status_code == 403  # people only, lists nothing
    assert snapshot() == before


def test_budgets_write_changes_a_budget_and_the_audit_names_the_token(t):
    budget = billing_services.budget_create(
        actor=SYSTEM,
        organization=t.org,
        scope="team",
        scope_id=t.team.pk,
        period="monthly",
        limit_usd="10.00",
    )
    token, raw = mint(t.team, ["budgets:read"], name="finops")
    r = client_for(raw).patch(f"/api/orgs/alpha/budgets/{budget.pk}/", {"limit_usd": "25.50"})
    assert r.status_code == 403 and r.json()["code"] == "missing_scope"
    token, raw = mint(t.team, ["budgets:read", "budgets:write"], name="finops")
    r = client_for(raw).patch(
        f"/api/orgs/alpha/budgets/{budget.pk}/", {"limit_usd": "25.50"}, format="json"
    )
    assert r.status_code == 200, r.json()
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal("25.50")
    event = AuditEvent.objects.filter(action="budget.update").get()
    assert event.actor is None
    assert event.actor_label == f"service token finops ({token.prefix})"


def test_keys_write_manages_keys_but_cannot_create_one(t):
    key = make_key(t.project, t.owner_membership, name="ci").api_key
    _tok, raw = mint(t.team, ["keys:read", "keys:write"])
    client = client_for(raw)
    r = client.post("/api/orgs/alpha/keys/", {"project": t.project.pk, "name": "new"})
    assert r.status_code == 403
    assert r.json()["detail"].startswith("A service token cannot create API keys")
    assert ApiKey.objects.count() == 1
    r = client.post(f"/api/orgs/alpha/keys/{key.pk}/revoke/")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None


def test_members_write_grants_only_roles_within_the_tokens_scopes(t):
    user = UserFactory(username="newbie")
    _tok, raw = mint(t.team, ["members:write"])
    client = client_for(raw)
    before = snapshot()
    r = client.post(
        "/api/orgs/alpha/members/", {"node": t.team.pk, "username": "newbie", "role": "admin"}
    )
    assert r.status_code == 403 and "cannot grant the admin role" in r.json()["detail"]
    assert snapshot() == before
    viewer_scopes = ["nodes:read", "members:write", "keys:read", "billing:read"]
    _tok, raw = mint(t.team, viewer_scopes)
    r = client_for(raw).post(
        "/api/orgs/alpha/members/", {"node": t.team.pk, "username": "newbie", "role": "viewer"}
    )
    assert r.status_code == 201
    assert Membership.objects.get(user=user).role == Role.VIEWER
    r = client_for(raw).post(
        "/api/orgs/alpha/members/", {"node": t.root.pk, "username": "newbie", "role": "viewer"}
    )
    assert r.status_code == 403  # the root is outside the token's subtree


# -- the service tokens endpoints ---------------------------------------------------------------


def test_owner_lists_creates_changes_and_revokes_tokens(t):
    client = owner_client(t.owner)
    r = client.post(
        "/api/orgs/alpha/service-tokens/",
        {"name": "terraform", "scopes": ["budgets:write", "budgets:read"], "node": t.team.pk},
        format="json",
    )
    assert r.status_code == 201, r.json()
    body = r.json()
    raw = body.pop("token")
    token = ServiceToken.objects.get()
    assert body == {
        "id": token.pk,
        "name": "terraform",
        "prefix": raw[:16],
        "node": t.team.pk,
        "scopes": ["budgets:read", "budgets:write"],
        "state": "active",
        "created_by": t.owner.username,
        "created_at": "2026-05-04T09:30:00Z",
        "expires_at": None,
        "last_used_at": None,
        "revoked_at": None,
    }
    listed = client.get("/api/orgs/alpha/service-tokens/").json()["results"]
    assert [row["id"] for row in listed] == [token.pk] and "token" not in listed[0]
    r = client.post("/api/orgs/alpha/service-tokens/", {"name": "org", "scopes": ["audit:read"]})
    assert r.status_code == 201 and r.json()["node"] == t.root.pk  # default: the whole org
    r = client.patch(
        f"/api/orgs/alpha/service-tokens/{token.pk}/",
        {"expires_at": "2026-06-01T00:00:00Z"},
        format="json",
    )
    assert r.status_code == 200 and r.json()["expires_at"] == "2026-06-01T00:00:00Z"
    r = client.post(f"/api/orgs/alpha/service-tokens/{token.pk}/revoke/")
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert client_for(raw).get("/api/orgs/alpha/budgets/").status_code == 401


def test_service_token_endpoints_give_field_errors(t, other):
    client = owner_client(t.owner)
    before = snapshot()
    r = client.post(
        "/api/orgs/alpha/service-tokens/",
        {"name": "x", "scopes": ["root:all"], "expires_at": "soon"},
        format="json",
    )
    assert r.status_code == 400
    assert set(r.json()) == {"scopes", "expires_at"}
    r = client.post("/api/orgs/alpha/service-tokens/", {"name": "x", "scopes": []}, format="json")
    assert r.status_code == 400 and set(r.json()) == {"scopes"}
    r = client.post(
        "/api/orgs/alpha/service-tokens/",
        {"name": "x", "scopes": ["keys:read"], "expires_at": "2026-05-04T09:00:00Z"},
        format="json",
    )
    assert r.status_code == 400
    assert r.json() == {"expires_at": ["The expiry must be in the future."]}
    r = client.post(
        "/api/orgs/alpha/service-tokens/",
        {"name": "x", "scopes": ["keys:read"], "node": other.team.pk},
        format="json",
    )
    assert r.status_code == 400 and list(r.json()) == ["node"]
    assert snapshot() == before and ServiceToken.objects.count() == 0


def test_a_department_admin_manages_only_tokens_of_their_subtree(t):
    dept_admin = add_member(t.dept, Role.ADMIN).user
    root_token, _raw = mint(t.root, ["audit:read"], name="root")
    team_token, _raw = mint(t.team, ["keys:read"], name="team")
    client = owner_client(dept_admin)
    listed = client.get("/api/orgs/alpha/service-tokens/").json()["results"]
    assert [row["name"] for row in listed] == ["team"]
    r = client.post(f"/api/orgs/alpha/service-tokens/{root_token.pk}/revoke/")
    assert r.status_code == 403
    r = client.post("/api/orgs/alpha/service-tokens/", {"name": "x", "scopes": ["keys:read"]})
    assert r.status_code == 403  # the default node is the root, beyond their role
    r = client.post(f"/api/orgs/alpha/service-tokens/{team_token.pk}/revoke/")
    assert r.status_code == 200
    root_token.refresh_from_db()
    assert root_token.revoked_at is None
    developer = add_member(t.project, Role.DEVELOPER).user
    assert owner_client(developer).get("/api/orgs/alpha/service-tokens/").status_code == 403


def test_service_token_endpoints_are_tenant_isolated(t, other):
    b_token, b_raw = mint(other.root, ["keys:read"], name="b")
    client = owner_client(t.owner)
    assert client.get("/api/orgs/beta/service-tokens/").status_code == 404
    assert client.get(f"/api/orgs/alpha/service-tokens/{b_token.pk}/").status_code == 404
    r = client.post(f"/api/orgs/alpha/service-tokens/{b_token.pk}/revoke/")
    assert r.status_code == 404
    r = client.patch(
        f"/api/orgs/alpha/service-tokens/{b_token.pk}/", {"expires_at": None}, format="json"
    )
    assert r.status_code == 404
    b_token.refresh_from_db()
    assert b_token.revoked_at is None
    assert client_for(b_raw).get("/api/orgs/beta/keys/").status_code == 200
    assert Budget.objects.count() == 0


def test_a_node_limited_token_is_refused_organization_wide_endpoints(t):
    _tok, raw = mint(t.team, ["audit:read", "billing:read"])
    for path in ("/api/orgs/alpha/audit-events/", "/api/orgs/alpha/billing/ledger/"):
        r = client_for(raw).get(path)
        assert r.status_code == 403, path
        assert r.json() == {
            "detail": "This endpoint is organization-wide; this service token is limited to "
            "Platform.",
            "code": "permission_denied",
        }
    _tok, raw = mint(t.root, ["audit:read"])
    assert client_for(raw).get("/api/orgs/alpha/audit-events/").status_code == 200


def test_the_service_token_list_costs_the_same_queries_for_2_or_8_tokens(t):
    client = owner_client(t.owner)
    for i in range(2):
        mint(t.team, ["keys:read"], name=f"a{i}")
    with CaptureQueriesContext(connection) as few:
        assert len(client.get("/api/orgs/alpha/service-tokens/").json()["results"]) == 2
    creator = Actor(user=t.owner)
    for i in range(6):
        services.service_token_create(
            actor=creator, node=t.project, name=f"b{i}", scopes=["keys:read"]
        )
    with CaptureQueriesContext(connection) as many:
        assert len(client.get("/api/orgs/alpha/service-tokens/").json()["results"]) == 8
    assert len(many) == len(few) == 6  # session, user, organization, permission, count, page


def test_the_admin_lists_tokens_read_only_and_never_shows_the_digest(t):
    token, _raw = mint(t.team, ["keys:read"], name="ci")
    admin_user = UserFactory(is_staff=True, is_superuser=True)
    client = owner_client(admin_user)
    listing = client.get("/admin/orgs/servicetoken/")
    assert listing.status_code == 200 and token.prefix in listing.content.decode()
    detail = client.get(f"/admin/orgs/servicetoken/{token.pk}/change/")
    assert detail.status_code == 200 and token.digest not in detail.content.decode()
    assert client.get("/admin/orgs/servicetoken/add/").status_code == 403


def test_a_token_is_never_the_trusted_system(t):
    """Services treat an actor without a user as the system; a token's actor has none, and is
    refused where the system would pass."""
    bot, _raw = mint(t.root, SCOPES)
    actor = Actor(service_token=bot)
    assert not actor.is_system and SYSTEM.is_system
    before = snapshot()
    with pytest.raises(NotAllowed, match="may not credit, refund or adjust"):
        billing_services.balance_refund(actor=actor, organization=t.org, amount="5.00", reason="x")
    with pytest.raises(NotAllowed, match="Only an owner can archive"):
        services.organization_archive(actor=actor, organization=t.org, revoke_keys=True)
    with pytest.raises(NotAllowed, match="cannot grant the owner role"):
        services.membership_create(actor=actor, node=t.team, user=UserFactory(), role="owner")
    assert snapshot() == before


def test_a_service_token_works_where_the_organization_requires_mfa(t):
    """Like a personal token, a service token is not a browser session: the organization's MFA
    requirement (docs/identity.md) does not refuse it, while a session without MFA is."""
    t.org.require_mfa = True
    t.org.save(update_fields=["require_mfa"])
    _, raw = mint(t.root, ["budgets:read"])
    r = client_for(raw).get("/api/orgs/alpha/budgets/")
    assert r.status_code == 200, r.json()
    r = owner_client(t.owner).get("/api/orgs/alpha/budgets/")
    assert r.status_code == 403 and r.json()["code"] == "mfa_required"
