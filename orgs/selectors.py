"""Reads: who may do what where, subtrees, and the querysets the API lists."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, F, OuterRef, QuerySet
from django.db.models.lookups import StartsWith

from orgs.models import Membership, Node, NodeUserPermission, Organization, Role
from orgs.roles import ROLE_PERMISSIONS


def organizations_for_user(*, user: Any) -> QuerySet[Organization]:
    """Live organizations where the user holds at least one active membership."""
    active = Membership.objects.filter(
        organization=OuterRef("pk"), user_id=user.pk, removed_at__isnull=True
    )
    return Organization.objects.filter(archived_at__isnull=True).filter(Exists(active))


def _grants(*, user_id: int, organization_id: int, perm: str) -> QuerySet[NodeUserPermission]:
    return NodeUserPermission.objects.filter(
        user_id=user_id,
        permission__codename=perm,
        content_object__organization_id=organization_id,
        content_object__archived_at__isnull=True,
    )


def permitted_nodes(*, user_id: int, organization_id: int, perm: str) -> QuerySet[Node]:
    """Nodes of the organization inside a subtree where the user holds ``perm``.

    One SQL statement: a node qualifies when some granted node's path is a prefix of its path.
    Use ``.values("id")`` of it as a subquery (``project_id__in=...``), never iterate it per row.
    """
    covering = _grants(user_id=user_id, organization_id=organization_id, perm=perm).filter(
        StartsWith(OuterRef("path"), F("content_object__path"))
    )
    return Node.objects.filter(organization_id=organization_id).filter(Exists(covering))


def permitted_node_ids(*, user_id: int, organization_id: int, perm: str) -> QuerySet[Any]:
    return permitted_nodes(user_id=user_id, organization_id=organization_id, perm=perm).values("id")


def has_perm_on_node(*, user_id: int, node: Node, perm: str) -> bool:
    """Whether ``perm`` is granted on ``node`` or one of its ancestors (one query)."""
    return (
        NodeUserPermission.objects.filter(
            user_id=user_id,
            permission__codename=perm,
            content_object_id__in=node.ancestor_ids,
            content_object__archived_at__isnull=True,
        )
        .only("id")
        .exists()
    )


def has_perm_anywhere(*, user_id: int, organization_id: int, perm: str) -> bool:
    return _grants(user_id=user_id, organization_id=organization_id, perm=perm).exists()


def memberships_covering(*, user_id: int, node: Node, perm: str) -> QuerySet[Membership]:
    """The user's active memberships on ``node`` or its ancestors whose role grants ``perm``,
    nearest first."""
    roles = [role for role, perms in ROLE_PERMISSIONS.items() if perm in perms]
    return (
        Membership.objects.filter(
            user_id=user_id,
            node_id__in=node.ancestor_ids,
            removed_at__isnull=True,
            role__in=roles,
        )
        .select_related("node")
        .order_by("-node__depth")
    )


def is_owner_over(*, user_id: int, node: Node) -> bool:
    return Membership.objects.filter(
        user_id=user_id, node_id__in=node.ancestor_ids, removed_at__isnull=True, role=Role.OWNER
    ).exists()


def subtree(node: Node, *, include_self: bool = True) -> QuerySet[Node]:
    qs = Node.objects.filter(organization_id=node.organization_id, path__startswith=node.path)
    return qs if include_self else qs.exclude(pk=node.pk)


def root_node(organization: Organization | int) -> Node:
    org_id = organization.pk if isinstance(organization, Organization) else organization
    return Node.objects.get(organization_id=org_id, parent__isnull=True)


def has_perm_at_root(*, user_id: int, organization_id: int, perm: str) -> bool:
    """Whether the user holds ``perm`` on the organization's root node (organization-wide)."""
    return (
        _grants(user_id=user_id, organization_id=organization_id, perm=perm)
        .filter(content_object__parent__isnull=True)
        .exists()
    )


# ---------------------------------------------------------------- list filters
# One declaration per list (orgs.filters): the management API's list endpoints and the
# console's lists filter with the same ones.

NODE_FILTERS = {
    "kind": ("kind", str),
    "parent": ("parent_id", int),
    "depth": ("depth", int),
    "slug": ("slug", str),
}
NODE_SEARCH = ("name", "slug")
MEMBER_FILTERS = {
    "node": ("node_id", int),
    "user": ("user_id", int),
    "role": ("role", str),
}
MEMBER_SEARCH = ("user__username", "user__email")
KEY_FILTERS = {
    "project": ("project_id", int),
    "membership": ("membership_id", int),
    "user": ("membership__user_id", int),
    "revoked": ("revoked_at", "present"),
}
KEY_SEARCH = ("name", "prefix")
AUDIT_FILTERS = {
    "action": ("action", str),
    "actor": ("actor_id", int),
    "target_type": ("target_type", str),
    "target_id": ("target_id", str),
    "since": ("created_at__gte", "datetime"),
    "until": ("created_at__lt", "datetime"),
}
