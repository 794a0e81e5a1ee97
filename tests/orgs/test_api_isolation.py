"""Tenancy: a member of org A can neither see nor change anything of org B (404), a developer
on one team cannot manage another team (403), and every denied call changes nothing."""

from __future__ import annotations

import pytest

from orgs import services
from orgs.models import ApiKey, ApiKeySecret, AuditEvent, Invitation, Membership, Node, Role
from tests.orgs.factories import SYSTEM, add_member, make_key, make_tree

pytestmark = pytest.mark.django_db


def snapshot():
    """Every orgs row that an API call could change."""
    return {
        "nodes": list(Node.objects.order_by("id").values()),
        "memberships": list(Membership.objects.order_by("id").values()),
        "keys": list(ApiKey.objects.order_by("id").values()),
        "secrets": list(ApiKeySecret.objects.order_by("id").values()),
        "invitations": list(Invitation.objects.order_by("id").values()),
        "audit": AuditEvent.objects.count(),
    }


@pytest.fixture
def world():
    a = make_tree("alpha")
    b = make_tree("beta")
    b_dev = add_member(b.team, Role.DEVELOPER)
    b_key = make_key(b.project, b_dev).api_key
    b_inv = services.invitation_create(
        actor=SYSTEM, node=b.team, email="x@example.com", role=Role.VIEWER
    ).invitation
    b_event = AuditEvent.objects.filter(organization=b.org).first()
    return {"a": a, "b": b, "b_dev": b_dev, "b_key": b_key, "b_inv": b_inv, "b_event": b_event}


def _cross_org_calls(w):
    b = w["b"]
    base = "/api/orgs/beta"
    node, member, key, inv, ev = (
        b.team.pk,
        w["b_dev"].pk,
        w["b_key"].pk,
        w["b_inv"].pk,
        w["b_event"].pk,
    )
    return [
        ("get", f"{base}/", None),
        ("patch", f"{base}/", {"name": "pwned"}),
        ("post", f"{base}/archive/", {"revoke_keys": True}),
        ("get", f"{base}/nodes/", None),
        ("post", f"{base}/nodes/", {"parent": b.root.pk, "name": "x", "slug": "x"}),
        ("get", f"{base}/nodes/{node}/", None),
        ("patch", f"{base}/nodes/{node}/", {"name": "pwned"}),
        ("post", f"{base}/nodes/{node}/move/", {"parent": b.dept.pk}),
        ("post", f"{base}/nodes/{node}/archive/", {"revoke_keys": True}),
        ("get", f"{base}/members/", None),
        (
            "post",
            f"{base}/members/",
            {"username": "alpha-owner", "node": b.root.pk, "role": "owner"},
        ),
        ("get", f"{base}/members/{member}/", None),
        ("patch", f"{base}/members/{member}/", {"role": "owner"}),
        ("delete", f"{base}/members/{member}/", None),
        ("get", f"{base}/invitations/", None),
        ("post", f"{base}/invitations/", {"email": "a@example.com", "node": node, "role": "admin"}),
        ("get", f"{base}/invitations/{inv}/", None),
        ("post", f"{base}/invitations/{inv}/revoke/", None),
        ("get", f"{base}/keys/", None),
        ("post", f"{base}/keys/", {"project": b.project.pk, "name": "x"}),
        ("get", f"{base}/keys/{key}/", None),
        ("patch", f"{base}/keys/{key}/", {"name": "pwned"}),
        ("post", f"{base}/keys/{key}/revoke/", None),
        ("post", f"{base}/keys/{key}/rotate/", {"grace_seconds": 60}),
        ("get", f"{base}/audit-events/", None),
        ("get", f"{base}/audit-events/{ev}/", None),
        ("get", f"{base}/audit-events/export/", None),
    ]


def test_org_a_owner_gets_404_for_everything_of_org_b(world, login):
    client = login(world["a"].owner)
    before = snapshot()
    calls = _cross_org_calls(world)
    for method, url, body in calls:
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 404, (method, url, response.status_code)
        assert response.json() == {"detail": "Not found.", "code": "not_found"}
    assert snapshot() == before
    assert len(calls) == 27


def test_org_b_ids_through_org_a_urls_are_not_found(world, login):
    client = login(world["a"].owner)
    b = world["b"]
    key, member, inv = world["b_key"].pk, world["b_dev"].pk, world["b_inv"].pk
    before = snapshot()
    for method, url, body in [
        ("get", f"/api/orgs/alpha/nodes/{b.team.pk}/", None),
        ("patch", f"/api/orgs/alpha/nodes/{b.team.pk}/", {"name": "pwned"}),
        ("post", f"/api/orgs/alpha/nodes/{b.team.pk}/archive/", {"revoke_keys": True}),
        ("get", f"/api/orgs/alpha/keys/{key}/", None),
        ("post", f"/api/orgs/alpha/keys/{key}/revoke/", None),
        ("post", f"/api/orgs/alpha/keys/{key}/rotate/", None),
        ("patch", f"/api/orgs/alpha/members/{member}/", {"role": "viewer"}),
        ("delete", f"/api/orgs/alpha/members/{member}/", None),
        ("post", f"/api/orgs/alpha/invitations/{inv}/revoke/", None),
    ]:
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 404, (method, url)
    # a foreign node as a target is indistinguishable from a missing one: 400 field error
    for url, body, field in [
        ("/api/orgs/alpha/nodes/", {"parent": b.root.pk, "name": "x", "slug": "x"}, "parent"),
        ("/api/orgs/alpha/keys/", {"project": b.project.pk, "name": "x"}, "project"),
        (
            "/api/orgs/alpha/members/",
            {"username": "alpha-owner", "node": b.team.pk, "role": "admin"},
            "node",
        ),
        (
            "/api/orgs/alpha/invitations/",
            {"email": "q@example.com", "node": b.team.pk, "role": "admin"},
            "node",
        ),
    ]:
        response = client.post(url, body, format="json")
        assert response.status_code == 400
        assert response.json() == {field: [f'Invalid pk "{body[field]}" - object does not exist.']}
    # moving an own node under a foreign parent
    response = client.post(
        f"/api/orgs/alpha/nodes/{world['a'].team.pk}/move/", {"parent": b.dept.pk}, format="json"
    )
    assert response.status_code == 400
    assert snapshot() == before


def test_org_list_shows_only_own_organizations(world, login):
    client = login(world["a"].owner)
    response = client.get("/api/orgs/")
    assert response.status_code == 200
    assert [o["slug"] for o in response.json()["results"]] == ["alpha"]


@pytest.fixture
def teams():
    t = make_tree("alpha")
    team2 = services.node_create(actor=SYSTEM, parent=t.dept, name="Data", slug="data")
    project2 = services.node_create(actor=SYSTEM, parent=team2, name="ETL", slug="etl")
    dev = add_member(t.team, Role.DEVELOPER)
    dev_key = make_key(t.project, dev, name="dev key").api_key
    owner_key_own_team = make_key(t.project, t.owner_membership, name="owner key").api_key
    other_key = make_key(project2, t.owner_membership, name="other team key").api_key
    other_dev = add_member(team2, Role.DEVELOPER)
    return {
        "t": t,
        "team2": team2,
        "project2": project2,
        "dev": dev,
        "dev_key": dev_key,
        "owner_key": owner_key_own_team,
        "other_key": other_key,
        "other_dev": other_dev,
    }


def test_developer_sees_only_own_team(teams, login):
    client = login(teams["dev"].user)
    keys = client.get("/api/orgs/alpha/keys/").json()
    assert sorted(k["id"] for k in keys["results"]) == sorted(
        [teams["dev_key"].pk, teams["owner_key"].pk]
    )
    nodes = client.get("/api/orgs/alpha/nodes/").json()
    assert sorted(n["id"] for n in nodes["results"]) == sorted(
        [teams["t"].team.pk, teams["t"].project.pk]
    )
    members = client.get("/api/orgs/alpha/members/").json()
    assert [m["id"] for m in members["results"]] == [teams["dev"].pk]


def test_developer_cannot_manage_another_team(teams, login):
    client = login(teams["dev"].user)
    t, other_key = teams["t"], teams["other_key"].pk
    before = snapshot()
    calls = [
        ("get", f"/api/orgs/alpha/keys/{other_key}/", None),
        ("patch", f"/api/orgs/alpha/keys/{other_key}/", {"name": "pwned"}),
        ("post", f"/api/orgs/alpha/keys/{other_key}/revoke/", None),
        ("post", f"/api/orgs/alpha/keys/{other_key}/rotate/", None),
        ("post", "/api/orgs/alpha/keys/", {"project": teams["project2"].pk, "name": "x"}),
        ("get", f"/api/orgs/alpha/nodes/{teams['team2'].pk}/", None),
        ("post", "/api/orgs/alpha/nodes/", {"parent": teams["team2"].pk, "name": "x", "slug": "x"}),
        ("patch", f"/api/orgs/alpha/nodes/{teams['team2'].pk}/", {"name": "pwned"}),
        ("post", f"/api/orgs/alpha/nodes/{teams['team2'].pk}/archive/", {"revoke_keys": True}),
        ("post", f"/api/orgs/alpha/nodes/{teams['project2'].pk}/move/", {"parent": t.team.pk}),
        ("patch", f"/api/orgs/alpha/members/{teams['other_dev'].pk}/", {"role": "viewer"}),
        ("delete", f"/api/orgs/alpha/members/{teams['other_dev'].pk}/", None),
        # nor manage its own team: developers do not manage nodes, members or others' keys
        ("post", "/api/orgs/alpha/nodes/", {"parent": t.team.pk, "name": "x", "slug": "x"}),
        ("patch", f"/api/orgs/alpha/nodes/{t.project.pk}/", {"name": "pwned"}),
        (
            "post",
            "/api/orgs/alpha/members/",
            {"username": "alpha-owner", "node": t.team.pk, "role": "admin"},
        ),
        ("post", f"/api/orgs/alpha/keys/{teams['owner_key'].pk}/revoke/", None),
        ("get", "/api/orgs/alpha/invitations/", None),
        (
            "post",
            "/api/orgs/alpha/invitations/",
            {"email": "e@example.com", "node": t.team.pk, "role": "developer"},
        ),
        ("get", "/api/orgs/alpha/audit-events/", None),
        ("get", "/api/orgs/alpha/audit-events/export/", None),
        ("patch", "/api/orgs/alpha/", {"name": "pwned"}),
    ]
    for method, url, body in calls:
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 403, (method, url, response.status_code)
        assert response.json()["code"] == "permission_denied", (method, url)
    assert snapshot() == before


def test_developer_manages_own_keys(teams, login):
    client = login(teams["dev"].user)
    response = client.post(
        "/api/orgs/alpha/keys/", {"project": teams["t"].project.pk, "name": "mine"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["membership"] == teams["dev"].pk
    response = client.post(f"/api/orgs/alpha/keys/{teams['dev_key'].pk}/revoke/")
    assert response.status_code == 200
    teams["dev_key"].refresh_from_db()
    assert teams["dev_key"].revoked_reason == "revoked"


def test_admin_cannot_grant_owner_and_nothing_changes(login):
    t = make_tree("alpha")
    admin = add_member(t.root, Role.ADMIN)
    viewer = add_member(t.team, Role.VIEWER)
    client = login(admin.user)
    before = snapshot()
    response = client.patch(
        f"/api/orgs/alpha/members/{viewer.pk}/", {"role": "owner"}, format="json"
    )
    assert response.status_code == 403
    assert response.json() == {
        "detail": "Only an owner can grant, change or remove the owner role.",
        "code": "permission_denied",
    }
    response = client.delete(f"/api/orgs/alpha/members/{t.owner_membership.pk}/")
    assert response.status_code == 403
    assert snapshot() == before


def test_anonymous_is_401(world, api):
    for url in ("/api/orgs/", "/api/orgs/beta/keys/", "/api/tokens/"):
        response = api.get(url)
        assert response.status_code == 401
        assert response.json() == {
            "detail": "Authentication credentials were not provided.",
            "code": "not_authenticated",
        }
