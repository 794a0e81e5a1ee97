"""``orgs.selectors.tenant_rows`` / ``node_trails``: the choke point the audit log's sentences
read names through (console/audit_text.py). Another organization's rows are absent, like
deleted ones, whatever ids are asked for."""

from __future__ import annotations

import pytest

from orgs.models import ApiKey, Membership, Node
from orgs.selectors import node_trails, tenant_rows
from tests.orgs.factories import make_key, make_tree

pytestmark = pytest.mark.django_db


def test_rows_of_another_organization_are_absent():
    acme, globex = make_tree("acme"), make_tree("globex")
    mine = make_key(acme.project, acme.owner_membership, name="mine").api_key
    theirs = make_key(globex.project, globex.owner_membership, name="theirs").api_key
    found = tenant_rows(
        ApiKey.objects.all(),
        organization_id=acme.org.pk,
        ids=[mine.pk, str(theirs.pk), "junk", None, 10**9],
    )
    assert found == {mine.pk: mine}
    members = tenant_rows(
        Membership.objects.select_related("user"),
        organization_id=globex.org.pk,
        ids={acme.owner_membership.pk, globex.owner_membership.pk},
    )
    assert list(members) == [globex.owner_membership.pk]


def test_no_ids_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert tenant_rows(Node.objects.all(), organization_id=1, ids=["", "x"]) == {}
        assert node_trails(organization_id=1, ids=[]) == {}


def test_node_trails_run_from_the_root_in_two_queries(django_assert_num_queries):
    acme, globex = make_tree("acme"), make_tree("globex")
    with django_assert_num_queries(2):
        trails = node_trails(
            organization_id=acme.org.pk, ids=[acme.project.pk, acme.dept.pk, globex.team.pk]
        )
    assert {pk: [n.name for n in trail] for pk, trail in trails.items()} == {
        acme.project.pk: ["Acme", "Engineering", "Platform", "Gateway"],
        acme.dept.pk: ["Acme", "Engineering"],
    }
