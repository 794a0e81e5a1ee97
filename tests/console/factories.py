"""Console test data: tenants through the orgs services (via the orgs test factories), catalog
rows through the routing test factories."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orgs import services
from orgs.models import Invitation, Membership, Role
from tests.orgs.factories import SYSTEM, Tree, UserFactory, add_member, make_key, make_tree
from tests.routing.factories import DeploymentFactory, ModelFactory, ProviderFactory

__all__ = [
    "SYSTEM",
    "DeploymentFactory",
    "ModelFactory",
    "ProviderFactory",
    "Tenant",
    "Tree",
    "UserFactory",
    "add_member",
    "make_key",
    "make_tenant",
    "make_tree",
]


@dataclass
class Tenant:
    """An organization with one of each role-holder and one of each kind of row."""

    tree: Tree
    other_dept: Any
    viewer: Any
    developer: Any
    developer_membership: Membership
    admin: Any
    owner_key: Any
    developer_key: Any
    invitation: Invitation


def make_tenant(slug: str = "acme") -> Tenant:
    tree = make_tree(slug)
    other_dept = services.node_create(
        actor=SYSTEM, parent=tree.root, name="Research", slug="research"
    )
    viewer = add_member(tree.root, Role.VIEWER, UserFactory(username=f"{slug}-viewer")).user
    developer_membership = add_member(
        tree.project, Role.DEVELOPER, UserFactory(username=f"{slug}-dev")
    )
    admin = add_member(tree.dept, Role.ADMIN, UserFactory(username=f"{slug}-admin")).user
    owner_key = make_key(tree.project, tree.owner_membership, name="owner key").api_key
    developer_key = make_key(tree.project, developer_membership, name="dev key").api_key
    invitation = services.invitation_create(
        actor=SYSTEM, node=tree.team, email=f"new@{slug}.example", role=Role.DEVELOPER
    ).invitation
    return Tenant(
        tree=tree,
        other_dept=other_dept,
        viewer=viewer,
        developer=developer_membership.user,
        developer_membership=developer_membership,
        admin=admin,
        owner_key=owner_key,
        developer_key=developer_key,
        invitation=invitation,
    )
