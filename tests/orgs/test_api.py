from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orgs import services
from orgs.keys import KeyRejected, key_context_for_sync
from orgs.models import ApiKey, AuditEvent, Invitation, Membership, Node, PersonalAccessToken, Role
from tests.orgs.factories import SYSTEM, UserFactory, add_member, make_key, make_tree
from tests.orgs.test_api_isolation import snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def t():
    return make_tree("alpha")


@pytest.fixture
def owner(t, login):
    return login(t.owner)


def test_create_organization_makes_caller_owner(login):
    user = UserFactory()
    client = login(user)
    response = client.post(
        "/api/orgs/", {"name": "Zeta", "slug": "zeta", "time_zone": "Asia/Tokyo"}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    root = Node.objects.get(organization__slug="zeta", parent__isnull=True)
    assert body["slug"] == "zeta" and body["time_zone"] == "Asia/Tokyo"
    assert body["root_node"] == root.pk
    assert Membership.objects.get(node=root).role == "owner"
    response = client.post("/api/orgs/", {"name": "Z", "slug": "zeta"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"slug": ["An organization with this slug already exists."]}
    response = client.post("/api/orgs/", {"name": "Z", "slug": "z2", "time_zone": "Mars/Base"})
    assert response.status_code == 400
    assert response.json() == {"time_zone": ["Unknown time zone 'Mars/Base'."]}


def test_node_crud_move_archive(t, owner):
    r = owner.post(
        "/api/orgs/alpha/nodes/", {"parent": t.root.pk, "name": "Research", "slug": "research"}
    )
    assert r.status_code == 201
    dept2 = r.json()
    assert dept2["kind"] == "department" and dept2["depth"] == 1
    assert dept2["path"] == f"/{t.root.pk}/{dept2['id']}/"

    r = owner.patch(f"/api/orgs/alpha/nodes/{t.team.pk}/", {"name": "Platform Eng"}, format="json")
    assert r.status_code == 200 and r.json()["name"] == "Platform Eng"

    r = owner.post(f"/api/orgs/alpha/nodes/{t.team.pk}/move/", {"parent": dept2["id"]})
    assert r.status_code == 200
    assert r.json()["path"] == f"/{t.root.pk}/{dept2['id']}/{t.team.pk}/"
    t.project.refresh_from_db()
    assert t.project.path == f"/{t.root.pk}/{dept2['id']}/{t.team.pk}/{t.project.pk}/"

    make_key(t.project, t.owner_membership)
    before = snapshot()
    r = owner.post(f"/api/orgs/alpha/nodes/{t.team.pk}/archive/", {}, format="json")
    assert r.status_code == 400
    assert list(r.json()) == ["revoke_keys"]
    assert snapshot() == before
    r = owner.post(f"/api/orgs/alpha/nodes/{t.team.pk}/archive/", {"revoke_keys": True})
    assert r.status_code == 200 and r.json()["archived_at"] is not None
    ids = [n["id"] for n in owner.get("/api/orgs/alpha/nodes/").json()["results"]]
    assert ids == sorted(
        [t.root.pk, t.dept.pk, dept2["id"]], key=lambda i: Node.objects.get(pk=i).path
    )
    r = owner.get("/api/orgs/alpha/nodes/?include_archived=true")
    assert r.json()["count"] == 5


def test_bad_node_input_is_400_with_field_errors_and_changes_nothing(t, owner):
    before = snapshot()
    cases = [
        (
            {"parent": t.root.pk, "name": "Dup", "slug": "eng"},
            {"slug": ["A sibling with this slug already exists."]},
        ),
        (
            {"parent": t.project.pk, "name": "X", "slug": "x"},
            {"parent": ["A project cannot have children."]},
        ),
        (
            {"parent": t.root.pk, "name": "X", "slug": "bad slug"},
            {
                "slug": [
                    'Enter a valid "slug" consisting of letters, numbers, underscores or hyphens.'
                ]
            },
        ),
        ({"parent": "abc", "name": "X", "slug": "x"}, {"parent": ["A valid integer is required."]}),
        (
            {"parent": 999999, "name": "X", "slug": "x"},
            {"parent": ['Invalid pk "999999" - object does not exist.']},
        ),
    ]
    for body, errors in cases:
        r = owner.post("/api/orgs/alpha/nodes/", body, format="json")
        assert r.status_code == 400, body
        assert r.json() == errors
    r = owner.post(f"/api/orgs/alpha/nodes/{t.dept.pk}/move/", {"parent": t.project.pk})
    assert r.status_code == 400
    assert r.json() == {
        "parent": ["A node cannot be moved under itself or one of its descendants."]
    }
    assert snapshot() == before


def test_members_add_change_remove(t, owner):
    user = UserFactory(username="newbie")
    r = owner.post(
        "/api/orgs/alpha/members/", {"username": "newbie", "node": t.team.pk, "role": "developer"}
    )
    assert r.status_code == 201
    member = r.json()
    assert member["user"] == {"id": user.pk, "username": "newbie", "email": "newbie@example.com"}
    assert member["role"] == "developer" and member["node"] == t.team.pk
    r = owner.post(
        "/api/orgs/alpha/members/", {"username": "newbie", "node": t.team.pk, "role": "viewer"}
    )
    assert r.status_code == 400
    assert r.json() == {"user": ["This user is already a member of this node."]}
    r = owner.post(
        "/api/orgs/alpha/members/", {"username": "ghost", "node": t.team.pk, "role": "viewer"}
    )
    assert r.status_code == 400 and list(r.json()) == ["username"]
    r = owner.patch(f"/api/orgs/alpha/members/{member['id']}/", {"role": "admin"}, format="json")
    assert r.status_code == 200 and r.json()["role"] == "admin"
    r = owner.delete(f"/api/orgs/alpha/members/{member['id']}/")
    assert r.status_code == 204
    assert Membership.objects.get(pk=member["id"]).removed_at is not None
    listed = owner.get("/api/orgs/alpha/members/").json()["results"]
    assert [m["id"] for m in listed] == [t.owner_membership.pk]
    everyone = owner.get("/api/orgs/alpha/members/?include_removed=true").json()["results"]
    assert [m["id"] for m in everyone] == [t.owner_membership.pk, member["id"]]
    # the last owner cannot leave
    r = owner.delete(f"/api/orgs/alpha/members/{t.owner_membership.pk}/")
    assert r.status_code == 400
    assert r.json() == {"membership": ["The organization's last owner cannot be removed."]}


def test_keys_create_show_once_update_rotate_revoke(t, owner, django_capture_on_commit_callbacks):
    r = owner.post(
        "/api/orgs/alpha/keys/",
        {
            "project": t.project.pk,
            "name": "ci",
            "allowed_models": ["openai/*"],
            "ip_allowlist": ["10.0.0.0/8"],
            "rpm_limit": 60,
            "routing_policy": {"strategy": "latency"},
        },
        format="json",
    )
    assert r.status_code == 201
    body = r.json()
    raw = body["key"]
    assert raw.startswith("mrk_") and body["prefix"] == raw[:16]
    assert body["membership"] == t.owner_membership.pk and body["user"] == t.owner.pk
    assert key_context_for_sync(raw).allowed_models == ("openai/*",)
    detail = owner.get(f"/api/orgs/alpha/keys/{body['id']}/").json()
    assert "key" not in detail and raw not in str(detail)

    r = owner.patch(
        f"/api/orgs/alpha/keys/{body['id']}/", {"tpm_limit": 5000, "name": "ci-2"}, format="json"
    )
    assert r.status_code == 200
    assert (r.json()["tpm_limit"], r.json()["name"], r.json()["rpm_limit"]) == (5000, "ci-2", 60)

    r = owner.post(f"/api/orgs/alpha/keys/{body['id']}/rotate/", {"grace_seconds": 3600})
    assert r.status_code == 200
    new_raw = r.json()["key"]
    assert new_raw != raw and r.json()["prefix"] == new_raw[:16]
    assert key_context_for_sync(raw).key_id == key_context_for_sync(new_raw).key_id == body["id"]

    with django_capture_on_commit_callbacks(execute=True):
        r = owner.post(f"/api/orgs/alpha/keys/{body['id']}/revoke/")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    for secret in (raw, new_raw):
        with pytest.raises(KeyRejected) as exc:
            key_context_for_sync(secret)
        assert exc.value.reason == "revoked"
    r = owner.post(f"/api/orgs/alpha/keys/{body['id']}/revoke/")
    assert r.status_code == 400
    assert r.json() == {"non_field_errors": ["This key is already revoked."]}


def test_bad_key_input_is_400_and_changes_nothing(t, owner):
    before = snapshot()
    cases = [
        ({"project": t.team.pk, "name": "x"}, {"project": ["API keys belong to a project."]}),
        (
            {"project": t.project.pk, "name": "x", "ip_allowlist": ["10.0.0.300/8"]},
            {"ip_allowlist": ["Enter a list of IP addresses or CIDR networks."]},
        ),
        (
            {"project": t.project.pk, "name": "x", "routing_policy": {"strategy": "cheapest"}},
            {"routing_policy.strategy": ["must be one of balanced, cost, latency, availability"]},
        ),
        (
            {"project": t.project.pk, "name": "x", "routing_policy": {"colour": "red"}},
            {
                "routing_policy.colour": [
                    "unknown field; known: strategy, allowed_models, blocked_models, "
                    "preferred_models, fallbacks, allowed_providers, blocked_providers, "
                    "allowed_regions, max_price_per_million, max_cost_per_request_usd, "
                    "max_latency_ms, quality_floor, zero_data_retention_only, reference_model, "
                    "cost_quality"
                ]
            },
        ),
        (
            {"project": t.project.pk, "name": "x", "expires_at": "2001-01-01T00:00:00Z"},
            {"expires_at": ["The expiry must be in the future."]},
        ),
        (
            {"project": t.project.pk, "name": "x", "rpm_limit": 0},
            {"rpm_limit": ["Ensure this value is greater than or equal to 1."]},
        ),
    ]
    for body, errors in cases:
        r = owner.post("/api/orgs/alpha/keys/", body, format="json")
        assert r.status_code == 400, body
        assert r.json() == errors, body
    r = owner.post(f"/api/orgs/alpha/keys/{0}/rotate/", {"grace_seconds": -1})
    assert r.status_code == 404
    assert snapshot() == before


def test_filters_search_and_pagination(t, owner):
    project2 = services.node_create(actor=SYSTEM, parent=t.team, name="Two", slug="two")
    k1 = make_key(t.project, t.owner_membership, name="alpha-1").api_key
    k2 = make_key(project2, t.owner_membership, name="beta-2").api_key
    k3 = make_key(project2, t.owner_membership, name="beta-3").api_key
    services.api_key_revoke(actor=SYSTEM, api_key=k3)
    ids = lambda r: [k["id"] for k in r.json()["results"]]  # noqa: E731
    assert ids(owner.get(f"/api/orgs/alpha/keys/?project={project2.pk}")) == [k3.pk, k2.pk]
    assert ids(owner.get("/api/orgs/alpha/keys/?revoked=false")) == [k2.pk, k1.pk]
    assert ids(owner.get("/api/orgs/alpha/keys/?revoked=true")) == [k3.pk]
    assert ids(owner.get("/api/orgs/alpha/keys/?q=beta")) == [k3.pk, k2.pk]
    page = owner.get("/api/orgs/alpha/keys/?limit=2&offset=1").json()
    assert page["count"] == 3 and [k["id"] for k in page["results"]] == [k2.pk, k1.pk]
    r = owner.get("/api/orgs/alpha/keys/?project=abc")
    assert r.status_code == 400 and r.json() == {"project": ["Expected a integer."]}
    kinds = owner.get("/api/orgs/alpha/nodes/?kind=project").json()["results"]
    assert sorted(n["id"] for n in kinds) == sorted([t.project.pk, project2.pk])


def _count_queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries), response.json()["count"]


def test_list_query_counts_are_constant(t, owner):
    urls = [
        "/api/orgs/alpha/nodes/",
        "/api/orgs/alpha/members/",
        "/api/orgs/alpha/keys/",
        "/api/orgs/alpha/invitations/",
        "/api/orgs/alpha/audit-events/",
        "/api/orgs/",
    ]
    make_key(t.project, t.owner_membership)
    services.invitation_create(actor=SYSTEM, node=t.team, email="i@example.com", role="viewer")
    small = {url: _count_queries(owner, url) for url in urls}
    for i in range(12):
        team = services.node_create(actor=SYSTEM, parent=t.dept, name=f"T{i}", slug=f"t{i}")
        project = services.node_create(actor=SYSTEM, parent=team, name=f"P{i}", slug=f"p{i}")
        member = add_member(team, Role.DEVELOPER)
        make_key(project, member)
        services.invitation_create(
            actor=SYSTEM, node=team, email=f"i{i}@example.com", role="viewer"
        )
        services.organization_create(actor=SYSTEM, name=f"O{i}", slug=f"o{i}", owner=t.owner)
    large = {url: _count_queries(owner, url) for url in urls}
    for url in urls:
        assert large[url][0] == small[url][0], url
        assert large[url][1] > small[url][1], url
    # session + user, organization, permission, count, page
    assert {url: n for url, (n, _) in large.items()} == {
        "/api/orgs/alpha/nodes/": 6,
        "/api/orgs/alpha/members/": 6,
        "/api/orgs/alpha/keys/": 6,
        "/api/orgs/alpha/invitations/": 6,
        "/api/orgs/alpha/audit-events/": 6,
        "/api/orgs/": 4,
    }


def test_invitation_flow(t, owner, login, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        r = owner.post(
            "/api/orgs/alpha/invitations/",
            {"email": "New.Person@Example.com", "node": t.team.pk, "role": "developer"},
            format="json",
        )
    assert r.status_code == 201
    assert r.json()["status"] == "pending" and r.json()["email"] == "new.person@example.com"
    assert "token" not in r.json()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["new.person@example.com"]
    assert "POST /api/" not in message.body
    (token,) = re.findall(r"/invitations/(mri_[\w-]+)/", message.body)

    stranger = login(UserFactory(email="someone@example.com"))
    r = stranger.post("/api/invitations/accept/", {"token": token})
    assert r.status_code == 400
    assert r.json() == {"token": ["This invitation was sent to another email address."]}

    invitee = UserFactory(email="new.person@example.com")
    client = login(invitee)
    r = client.post("/api/invitations/accept/", {"token": token})
    assert r.status_code == 201
    membership = Membership.objects.get(user=invitee)
    assert (membership.node_id, membership.role) == (t.team.pk, "developer")
    assert r.json()["id"] == membership.pk
    r = client.post("/api/invitations/accept/", {"token": token})
    assert r.status_code == 400
    assert r.json() == {"token": ["This invitation has already been used."]}
    assert Membership.objects.filter(user=invitee).count() == 1


def test_expired_invitation_is_400_and_creates_nothing(t, login):
    created = services.invitation_create(
        actor=SYSTEM, node=t.team, email="late@example.com", role="viewer"
    )
    Invitation.objects.filter(pk=created.invitation.pk).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    client = login(UserFactory(email="late@example.com"))
    before = snapshot()
    r = client.post("/api/invitations/accept/", {"token": created.token})
    assert r.status_code == 400
    assert r.json() == {"token": ["This invitation has expired."]}
    r = client.post("/api/invitations/accept/", {"token": "mri_nonexistent0_" + "x" * 43})
    assert r.json() == {"token": ["This invitation token is not valid."]}
    assert snapshot() == before


def test_invitation_revoke(t, owner):
    created = services.invitation_create(
        actor=SYSTEM, node=t.team, email="r@example.com", role="viewer"
    )
    r = owner.post(f"/api/orgs/alpha/invitations/{created.invitation.pk}/revoke/")
    assert r.status_code == 200 and r.json()["status"] == "revoked"


def test_audit_log_lists_and_exports_csv(t, owner):
    key = make_key(t.project, t.owner_membership, name="=HYPERLINK(1)")
    services.api_key_revoke(actor=SYSTEM, api_key=key.api_key)
    r = owner.get("/api/orgs/alpha/audit-events/?action=api_key.create")
    assert r.status_code == 200
    [event] = r.json()["results"]
    assert event["target_type"] == "apikey" and event["target_id"] == str(key.api_key.pk)
    assert event["actor_label"] == "system"
    assert key.raw_key not in str(AuditEvent.objects.values_list("changes", flat=True)[:100])

    r = owner.get("/api/orgs/alpha/audit-events/export/")
    assert r.status_code == 200
    assert r["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(b"".join(r.streaming_content).decode())))
    assert rows[0] == [
        "id",
        "created_at",
        "actor_id",
        "actor_label",
        "action",
        "target_type",
        "target_id",
        "target_repr",
        "changes",
        "ip",
        "request_id",
    ]
    expected_actions = list(
        AuditEvent.objects.filter(organization=t.org)
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert [row[4] for row in rows[1:]] == expected_actions
    assert expected_actions[-2:] == ["api_key.create", "api_key.revoke"]
    create_row = rows[-2]
    assert create_row[7].startswith("'=HYPERLINK(1)")  # formula injection defused


def test_api_actions_record_actor_ip_and_request_id(t, owner):
    owner.post(
        "/api/orgs/alpha/nodes/",
        {"parent": t.root.pk, "name": "Ops", "slug": "ops"},
        HTTP_X_REQUEST_ID="req-123",
        REMOTE_ADDR="203.0.113.9",
    )
    event = AuditEvent.objects.get(action="node.create", target_repr="department:ops")
    assert (event.actor_id, event.actor_label, event.ip, event.request_id) == (
        t.owner.pk,
        "alpha-owner",
        "203.0.113.9",
        "req-123",
    )
    assert event.changes == {
        "kind": "department",
        "name": "Ops",
        "slug": "ops",
        "parent": t.root.pk,
    }


def test_personal_access_tokens(t, owner, api):
    r = owner.post("/api/tokens/", {"name": "ci"})
    assert r.status_code == 201
    raw = r.json()["token"]
    assert raw.startswith("mrp_")
    token = PersonalAccessToken.objects.get()
    assert token.digest != raw and token.prefix == raw[:16]
    for scheme in ("Token", "Bearer"):
        anon = api.__class__()
        response = anon.get("/api/orgs/alpha/keys/", HTTP_AUTHORIZATION=f"{scheme} {raw}")
        assert response.status_code == 200, scheme
    anon = api.__class__()
    r = anon.get("/api/orgs/", HTTP_AUTHORIZATION=f"Token {raw[:-2]}xx")
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"
    gateway_key = make_key(t.project, t.owner_membership).raw_key
    r = anon.get("/api/orgs/", HTTP_AUTHORIZATION=f"Bearer {gateway_key}")
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"
    r = owner.delete(f"/api/tokens/{token.pk}/")
    assert r.status_code == 204
    r = anon.get("/api/orgs/", HTTP_AUTHORIZATION=f"Token {raw}")
    assert r.status_code == 401
    assert r.json() == {"detail": "This token has been revoked.", "code": "token_revoked"}
    PersonalAccessToken.objects.filter(pk=token.pk).update(
        revoked_at=None, expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    r = anon.get("/api/orgs/", HTTP_AUTHORIZATION=f"Token {raw}")
    assert r.json() == {"detail": "This token has expired.", "code": "token_expired"}


def test_other_users_tokens_are_invisible(t, owner, login):
    other = UserFactory()
    created = services.access_token_create(user=other, name="theirs")
    assert owner.get(f"/api/tokens/{created.token.pk}/").status_code == 404
    assert owner.delete(f"/api/tokens/{created.token.pk}/").status_code == 404
    assert PersonalAccessToken.objects.get().revoked_at is None


def test_schema_describes_the_management_api(owner):
    r = owner.get("/api/schema/?format=json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in (
        "/api/orgs/",
        "/api/orgs/{org_slug}/nodes/",
        "/api/orgs/{org_slug}/nodes/{id}/move/",
        "/api/orgs/{org_slug}/keys/{id}/rotate/",
        "/api/orgs/{org_slug}/audit-events/export/",
        "/api/invitations/accept/",
        "/api/tokens/",
    ):
        assert path in paths, path
    params = {p["name"] for p in paths["/api/orgs/{org_slug}/keys/"]["get"]["parameters"]}
    assert {"project", "revoked", "q", "limit", "offset"} <= params


def test_key_list_is_scoped_for_billing_manager(t, login):
    billing = add_member(t.root, Role.BILLING_MANAGER)
    make_key(t.project, t.owner_membership)
    client = login(billing.user)
    assert client.get("/api/orgs/alpha/keys/").json()["count"] == 1
    r = client.post("/api/orgs/alpha/keys/", {"project": t.project.pk, "name": "x"})
    assert r.status_code == 403
    assert ApiKey.objects.count() == 1


def test_tenancy_and_permission_resolution_costs_two_queries(t, api, django_assert_num_queries):
    """Token/session lookup aside: organization + permission, then the data itself."""
    key = make_key(t.project, t.owner_membership).api_key
    dev = add_member(t.team, Role.DEVELOPER)
    for user in (t.owner, dev.user):
        api.force_authenticate(user)
        with django_assert_num_queries(3):  # organization, permission, the row
            assert api.get(f"/api/orgs/alpha/keys/{key.pk}/").status_code == 200
        with django_assert_num_queries(4):  # organization, permission, count, page
            assert api.get("/api/orgs/alpha/keys/").json()["count"] == 1


def test_archive_organization(t, owner, login, django_capture_on_commit_callbacks):
    raw = make_key(t.project, t.owner_membership).raw_key
    admin = add_member(t.root, Role.ADMIN)
    before = snapshot()
    r = login(admin.user).post("/api/orgs/alpha/archive/", {"revoke_keys": True})
    assert r.status_code == 403
    assert r.json() == {
        "detail": "Only an owner can archive the organization.",
        "code": "permission_denied",
    }
    owner = login(t.owner)
    r = owner.post("/api/orgs/alpha/archive/", {})
    assert r.status_code == 400 and list(r.json()) == ["revoke_keys"]
    assert snapshot() == before
    key_context_for_sync(raw)
    with django_capture_on_commit_callbacks(execute=True):
        r = owner.post("/api/orgs/alpha/archive/", {"revoke_keys": True})
    assert r.status_code == 204
    with pytest.raises(KeyRejected) as exc:
        key_context_for_sync(raw)
    assert exc.value.reason == "revoked"
    assert owner.get("/api/orgs/").json()["count"] == 0
    assert owner.get("/api/orgs/alpha/keys/").status_code == 404
    assert AuditEvent.objects.filter(action="organization.archive").get().changes == {
        "revoked_keys": 1
    }


def test_out_of_range_ids_are_field_errors_and_unknown_api_paths_answer_json(t, owner):
    """Found by schemathesis (make api-fuzz): an id beyond 64 bits reached the database
    (500), and Django's own 404 under /api/ was an HTML page."""
    r = owner.post(
        "/api/orgs/alpha/invitations/",
        {"email": "big@example.com", "node": 2**70, "role": "developer"},
        format="json",
    )
    assert r.status_code == 400
    assert list(r.json()) == ["node"]
    r = owner.get("/api/orgs/alpha/no-such-thing/")
    assert r.status_code == 404
    assert r["Content-Type"] == "application/json"
    assert r.json() == {"detail": "Not found."}
