from __future__ import annotations

import pytest

from orgs import services
from orgs.errors import InvalidInput
from orgs.models import ApiKey, AuditEvent, Node, NodeUserPermission
from orgs.selectors import subtree
from tests.orgs.factories import SYSTEM, make_key, make_tree

pytestmark = pytest.mark.django_db


def _paths(org):
    return dict(Node.objects.filter(organization=org).values_list("id", "path"))


def test_tree_paths_kinds_and_depths():
    t = make_tree()
    assert t.root.path == f"/{t.root.pk}/"
    assert t.dept.path == f"/{t.root.pk}/{t.dept.pk}/"
    assert t.team.path == f"/{t.root.pk}/{t.dept.pk}/{t.team.pk}/"
    assert t.project.path == f"/{t.root.pk}/{t.dept.pk}/{t.team.pk}/{t.project.pk}/"
    assert [(n.kind, n.depth) for n in (t.root, t.dept, t.team, t.project)] == [
        ("organization", 0),
        ("department", 1),
        ("team", 2),
        ("project", 3),
    ]
    assert t.project.ancestor_ids == [t.root.pk, t.dept.pk, t.team.pk, t.project.pk]
    # owner holds all 12 node permissions at the root
    assert NodeUserPermission.objects.filter(user=t.owner, content_object=t.root).count() == 12


def test_subtree_is_one_prefix_query(django_assert_num_queries):
    t = make_tree()
    other_team = services.node_create(actor=SYSTEM, parent=t.dept, name="B", slug="b")
    with django_assert_num_queries(1):
        ids = sorted(subtree(t.dept).values_list("id", flat=True))
    assert ids == sorted([t.dept.pk, t.team.pk, t.project.pk, other_team.pk])
    assert sorted(subtree(t.team, include_self=False).values_list("id", flat=True)) == [
        t.project.pk
    ]


def test_project_cannot_have_children_and_nothing_is_created():
    t = make_tree()
    before = Node.objects.count()
    with pytest.raises(InvalidInput) as exc:
        services.node_create(actor=SYSTEM, parent=t.project, name="X", slug="x")
    assert exc.value.errors == {"parent": ["A project cannot have children."]}
    assert Node.objects.count() == before


def test_duplicate_slug_among_siblings_is_refused_but_allowed_elsewhere():
    t = make_tree()
    with pytest.raises(InvalidInput) as exc:
        services.node_create(actor=SYSTEM, parent=t.root, name="Other", slug="eng")
    assert exc.value.errors == {"slug": ["A sibling with this slug already exists."]}
    # the same slug under another parent is fine
    n = services.node_create(actor=SYSTEM, parent=t.dept, name="Eng team", slug="eng")
    assert n.slug == "eng" and n.parent_id == t.dept.pk


def test_bad_slug_and_blank_name():
    t = make_tree()
    with pytest.raises(InvalidInput) as exc:
        services.node_create(actor=SYSTEM, parent=t.root, name=" ", slug="no spaces")
    assert exc.value.errors == {
        "name": ["This field may not be blank."],
        "slug": ["Enter 1 to 80 letters, numbers, underscores or hyphens."],
    }


def test_move_team_rewrites_subtree_paths():
    t = make_tree()
    dept2 = services.node_create(actor=SYSTEM, parent=t.root, name="Research", slug="research")
    services.node_move(actor=SYSTEM, node=t.team, new_parent=dept2)
    t.team.refresh_from_db()
    t.project.refresh_from_db()
    assert t.team.parent_id == dept2.pk
    assert t.team.path == f"/{t.root.pk}/{dept2.pk}/{t.team.pk}/"
    assert t.project.path == f"/{t.root.pk}/{dept2.pk}/{t.team.pk}/{t.project.pk}/"
    event = AuditEvent.objects.filter(action="node.move").get()
    assert event.changes == {"parent": [t.dept.pk, dept2.pk]}


@pytest.mark.parametrize("case", ["self", "descendant", "other_org", "wrong_level", "root"])
def test_invalid_moves_change_nothing(case):
    t = make_tree()
    other = make_tree("other")
    node, parent, field, message = {
        "self": (t.team, t.team, "parent", "under itself or one of its descendants"),
        "descendant": (t.dept, t.project, "parent", "under itself or one of its descendants"),
        "other_org": (t.team, other.dept, "parent", "same organization"),
        "wrong_level": (t.team, t.root, "parent", "must be placed under a department"),
        "root": (t.root, t.dept, "parent", "root node cannot be moved"),
    }[case]
    before, events = _paths(t.org), AuditEvent.objects.count()
    with pytest.raises(InvalidInput) as exc:
        services.node_move(actor=SYSTEM, node=node, new_parent=parent)
    assert list(exc.value.errors) == [field]
    assert message in exc.value.errors[field][0]
    assert _paths(t.org) == before
    assert AuditEvent.objects.count() == events


def test_move_onto_a_sibling_with_the_same_slug_is_refused():
    t = make_tree()
    dept2 = services.node_create(actor=SYSTEM, parent=t.root, name="R", slug="research")
    services.node_create(actor=SYSTEM, parent=dept2, name="Platform 2", slug="platform")
    before = _paths(t.org)
    with pytest.raises(InvalidInput) as exc:
        services.node_move(actor=SYSTEM, node=t.team, new_parent=dept2)
    assert exc.value.errors == {"slug": ["The new parent already has a child with this slug."]}
    assert _paths(t.org) == before


def test_archive_with_live_keys_requires_revoke_keys():
    t = make_tree()
    key = make_key(t.project, t.owner_membership).api_key
    with pytest.raises(InvalidInput) as exc:
        services.node_archive(actor=SYSTEM, node=t.team)
    assert exc.value.errors == {
        "revoke_keys": [
            "1 active API key(s) belong to this subtree; pass revoke_keys=true to revoke them "
            "with it."
        ]
    }
    key.refresh_from_db()
    assert key.revoked_at is None
    assert Node.objects.filter(archived_at__isnull=False).count() == 0

    revoked = services.node_archive(actor=SYSTEM, node=t.team, revoke_keys=True)
    assert revoked == 1
    key.refresh_from_db()
    assert key.revoked_reason == "node_archived" and key.revoked_at is not None
    archived = set(Node.objects.filter(archived_at__isnull=False).values_list("id", flat=True))
    assert archived == {t.team.pk, t.project.pk}
    event = AuditEvent.objects.get(action="node.archive")
    assert event.changes == {"archived_nodes": 2, "revoked_keys": 1}


def test_archived_project_takes_no_new_keys():
    t = make_tree()
    services.node_archive(actor=SYSTEM, node=t.project)
    t.project.refresh_from_db()
    with pytest.raises(InvalidInput) as exc:
        make_key(t.project, t.owner_membership)
    assert exc.value.errors == {"project": ["The project is archived."]}
    assert ApiKey.objects.count() == 0
