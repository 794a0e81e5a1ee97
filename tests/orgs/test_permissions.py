from __future__ import annotations

import pytest
from django.db import transaction

from orgs import services
from orgs.audit import REDACTED, Actor, audit_event_record, scrub
from orgs.errors import InvalidInput, NotAllowed
from orgs.models import AuditEvent, Membership, NodeUserPermission, Role
from orgs.policy import PolicyError, routing_policy_clean
from orgs.roles import ALL_PERMISSIONS, ROLE_PERMISSIONS
from orgs.selectors import has_perm_on_node, permitted_node_ids
from tests.orgs.factories import SYSTEM, UserFactory, add_member, make_tree

pytestmark = pytest.mark.django_db

MATRIX = {
    # the table in docs/permissions.md
    "owner": set(ALL_PERMISSIONS),
    "admin": set(ALL_PERMISSIONS),
    "billing_manager": {"view_node", "view_members", "view_keys", "view_billing", "manage_billing"},
    "developer": {"view_node", "view_members", "view_keys", "create_keys"},
    "viewer": {"view_node", "view_members", "view_keys", "view_billing"},
}


def test_role_matrix_is_the_documented_one():
    assert {role: set(perms) for role, perms in ROLE_PERMISSIONS.items()} == MATRIX
    assert len(ALL_PERMISSIONS) == 12


@pytest.mark.parametrize("role", list(MATRIX))
def test_role_on_a_team_grants_its_permissions_on_the_subtree_only(role):
    t = make_tree()
    sibling = services.node_create(actor=SYSTEM, parent=t.dept, name="Other", slug="other")
    m = add_member(t.team, role)
    granted = set(
        NodeUserPermission.objects.filter(user=m.user).values_list(
            "permission__codename", flat=True
        )
    )
    assert granted == MATRIX[role]
    for perm in ALL_PERMISSIONS:
        expected = perm in MATRIX[role]
        assert has_perm_on_node(user_id=m.user_id, node=t.team, perm=perm) is expected
        assert has_perm_on_node(user_id=m.user_id, node=t.project, perm=perm) is expected
        assert has_perm_on_node(user_id=m.user_id, node=t.dept, perm=perm) is False
        assert has_perm_on_node(user_id=m.user_id, node=sibling, perm=perm) is False


def test_guardian_sees_the_same_grants():
    t = make_tree()
    m = add_member(t.team, Role.DEVELOPER)
    # guardian's own API reads the direct-FK table
    from guardian.shortcuts import get_perms

    assert set(get_perms(m.user, t.team)) == MATRIX["developer"]


def test_permitted_node_ids_is_one_subquery(django_assert_num_queries):
    t = make_tree()
    other = make_tree("other")
    m = add_member(t.team, Role.VIEWER)
    add_member(other.root, Role.OWNER, user=m.user)  # owner elsewhere must not leak in
    qs = permitted_node_ids(user_id=m.user_id, organization_id=t.org.pk, perm="view_keys")
    with django_assert_num_queries(1):
        ids = sorted(row["id"] for row in qs)
    assert ids == sorted([t.team.pk, t.project.pk])


def test_role_change_and_removal_resync_grants():
    t = make_tree()
    m = add_member(t.team, Role.VIEWER)
    services.membership_update(actor=Actor(user=t.owner), membership=m, role=Role.ADMIN)
    assert has_perm_on_node(user_id=m.user_id, node=t.project, perm="manage_keys") is True
    services.membership_remove(actor=Actor(user=t.owner), membership=m)
    assert NodeUserPermission.objects.filter(user=m.user).count() == 0
    assert has_perm_on_node(user_id=m.user_id, node=t.project, perm="view_node") is False
    events = list(
        AuditEvent.objects.filter(target_type="membership", target_id=str(m.pk)).values_list(
            "action", "changes"
        )
    )
    assert events == [
        ("membership.remove", {"user": m.user_id, "role": "admin"}),
        ("membership.update", {"role": ["viewer", "admin"]}),
        ("membership.create", {"user": m.user_id, "node": t.team.pk, "role": "viewer"}),
    ]


def test_only_owners_grant_owner_and_last_owner_stays():
    t = make_tree()
    admin = add_member(t.root, Role.ADMIN)
    user = UserFactory()
    with pytest.raises(NotAllowed):
        services.membership_create(
            actor=Actor(user=admin.user), node=t.team, user=user, role="owner"
        )
    assert not Membership.objects.filter(user=user).exists()
    with pytest.raises(InvalidInput) as exc:
        services.membership_update(
            actor=Actor(user=t.owner), membership=t.owner_membership, role="admin"
        )
    assert exc.value.errors == {"role": ["The organization's last owner cannot be demoted."]}
    second = services.membership_create(
        actor=Actor(user=t.owner), node=t.root, user=user, role="owner"
    )
    services.membership_update(actor=Actor(user=user), membership=t.owner_membership, role="admin")
    t.owner_membership.refresh_from_db()
    assert (t.owner_membership.role, second.role) == ("admin", "owner")


@pytest.mark.django_db(transaction=True)
def test_audit_refuses_to_write_outside_a_transaction():
    t = make_tree("tx")
    before = AuditEvent.objects.count()
    with pytest.raises(RuntimeError, match="inside the change's transaction"):
        audit_event_record(organization=t.org, actor=SYSTEM, action="x.y", target=t.org)
    assert AuditEvent.objects.count() == before


def test_audit_scrubs_secrets():
    t = make_tree()
    assert scrub({"password": "p", "client_secret": "s", "token_digest": "d", "name": "n"}) == {
        "password": REDACTED,
        "client_secret": REDACTED,
        "token_digest": REDACTED,
        "name": "n",
    }
    with transaction.atomic():
        event = audit_event_record(
            organization=t.org,
            actor=Actor(user=t.owner, ip="198.51.100.4"),
            action="credential.update",
            target_type="credential",
            target_id=7,
            changes={"api_secret": ["old", "new"], "region": ["us", "eu"]},
        )
    event.refresh_from_db()
    assert event.changes == {"api_secret": REDACTED, "region": ["us", "eu"]}
    assert (event.actor_label, event.ip, event.target_id) == ("acme-owner", "198.51.100.4", "7")


def test_routing_policy_schema():
    """A key's routing policy is the one policy document (orgs.policy), stored as JSON."""
    assert routing_policy_clean(None) is None
    assert routing_policy_clean(
        {"strategy": "cost", "allowed_models": ["openai/*"], "max_cost_per_request_usd": "0.050"}
    ) == {"strategy": "cost", "allowed_models": ["openai/*"], "max_cost_per_request_usd": "0.05"}
    assert routing_policy_clean({"reference_model": " openai/gpt-4o "}) == {
        "reference_model": "openai/gpt-4o"
    }
    for bad, errors in [
        ([], {"": "must be an object"}),
        (
            {"strategy": "fast"},
            {"strategy": "must be one of balanced, cost, latency, availability"},
        ),
        ({"blocked_models": "openai/*"}, {"blocked_models": "must be a list of strings"}),
        (
            {"max_cost_per_request_usd": True},
            {"max_cost_per_request_usd": "must be a decimal number"},
        ),
        (
            {"max_cost_per_request_usd": "-1"},
            {"max_cost_per_request_usd": "must be a positive number"},
        ),
        (
            {"reference_model": ["a"]},
            {"reference_model": "must be a model id (1 to 255 characters)"},
        ),
    ]:
        with pytest.raises(PolicyError) as exc:
            routing_policy_clean(bad)
        assert exc.value.errors == errors
    with pytest.raises(PolicyError) as exc:
        routing_policy_clean({"x": 1})
    assert list(exc.value.errors) == ["x"]
    assert exc.value.errors["x"].startswith("unknown field; known: strategy, allowed_models")
