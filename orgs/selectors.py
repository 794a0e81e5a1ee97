"""Reads: who may do what where, subtrees, and the querysets the API lists."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.db.models.lookups import StartsWith
from django.utils import timezone

from orgs import secrets
from orgs.models import (
    Invitation,
    Membership,
    Node,
    NodeUserPermission,
    Organization,
    Role,
    ServiceToken,
)
from orgs.roles import ROLE_PERMISSIONS, scope_permissions


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


def tenant_rows(queryset: QuerySet[Any], *, organization_id: int, ids: Any) -> dict[int, Any]:
    """``{id: row}`` of the rows of ``queryset`` among ``ids`` that belong to the organization,
    in one query (none when no id is usable). A row of another organization is absent, exactly
    like a deleted one, so names read through this never cross tenants (the audit log's
    sentences, console/audit_text.py)."""
    wanted = {int(i) for i in ids if isinstance(i, int) or (isinstance(i, str) and i.isdigit())}
    if not wanted:
        return {}
    rows = queryset.filter(organization_id=organization_id, pk__in=wanted)
    return {row.pk: row for row in rows}


def node_trails(*, organization_id: int, ids: Any) -> dict[int, list[Node]]:
    """``{id: [root, ..., node]}`` for the organization's nodes among ``ids``, in two queries
    (the nodes, then every ancestor they name in their paths)."""
    nodes = tenant_rows(Node.objects.all(), organization_id=organization_id, ids=ids)
    above = {a for node in nodes.values() for a in node.ancestor_ids} - set(nodes)
    known = {**nodes, **tenant_rows(Node.objects.all(), organization_id=organization_id, ids=above)}
    return {pk: [known[a] for a in node.ancestor_ids if a in known] for pk, node in nodes.items()}


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


# ---------------------------------------------------------------- service tokens
# What a service token may do: its scopes' permissions (orgs.roles.SCOPE_PERMISSIONS), on its
# node's subtree only. The management API's choke point asks these instead of the user grants.

# Why a service token is refused (the API's 401 answers), by state.
SERVICE_TOKEN_REFUSALS = {
    "invalid": "Invalid token.",
    "revoked": "This service token has been revoked.",
    "expired": "This service token has expired.",
    "archived": "This service token's organization or node has been archived.",
}


def service_token_state(token: ServiceToken, *, now: dt.datetime | None = None) -> str:
    """``revoked``, ``expired``, ``archived`` or ``active`` (the node and organization loaded)."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= (now or timezone.now()):
        return "expired"
    if token.node.archived_at is not None or token.organization.archived_at is not None:
        return "archived"
    return "active"


def service_token_for(raw: str) -> tuple[ServiceToken | None, str]:
    """The token a raw ``mrs_`` secret opens (compared in constant time) and its state (a key of
    ``SERVICE_TOKEN_REFUSALS``, or ``active``); one query."""
    prefix = secrets.prefix_of(raw or "", secrets.SERVICE_TOKEN)
    if prefix is None:
        return None, "invalid"
    qs = ServiceToken.objects.select_related("organization", "node")
    token = qs.filter(prefix=prefix).first()
    if token is None or not secrets.matches(raw, token.digest):
        return None, "invalid"
    return token, service_token_state(token)


def service_token_may(*, token: ServiceToken, node: Node, perm: str) -> bool:
    """Whether the token holds ``perm`` on ``node`` (inside its subtree, in one of its scopes)."""
    return (
        node.organization_id == token.organization_id
        and token.node_id in node.ancestor_ids
        and perm in scope_permissions(token.scopes)
    )


def service_token_may_at_root(*, token: ServiceToken, perm: str) -> bool:
    """Organization-wide: the token is not limited to a node below the root."""
    return token.node.parent_id is None and perm in scope_permissions(token.scopes)


def service_token_node_ids(*, token: ServiceToken, perm: str) -> QuerySet[Any]:
    """Ids of the nodes where the token holds ``perm`` (a subquery: use with ``__in``)."""
    if perm not in scope_permissions(token.scopes):
        return Node.objects.none().values("id")
    return subtree(token.node).values("id")


def organizations_for_service_token(*, token: ServiceToken) -> QuerySet[Organization]:
    return Organization.objects.filter(pk=token.organization_id, archived_at__isnull=True)


def service_tokens_of(*, organization: Organization) -> QuerySet[ServiceToken]:
    """The organization's service tokens with what their lists show."""
    return ServiceToken.objects.filter(organization=organization).select_related(
        "organization", "node", "created_by"
    )


# ---------------------------------------------------------------- invitations

# Where an invitation's link opens: the console's ``console:invitation`` page (console/urls.py).
INVITATION_PATH = "/invitations/{token}/"
# Why an invitation cannot be used, by state (the API and the console give the same words).
INVITATION_REFUSALS = {
    "invalid": "This invitation token is not valid.",
    "accepted": "This invitation has already been used.",
    "revoked": "This invitation has been revoked.",
    "expired": "This invitation has expired.",
    "archived": "The invitation's node has been archived.",
}


def invitation_url(token: str) -> str:
    """The absolute link an invitation email holds (``MEGAROUTER_PUBLIC_URL`` + the page)."""
    return settings.MEGAROUTER_PUBLIC_URL + INVITATION_PATH.format(token=token)


def invitation_state(invitation: Invitation, *, now: dt.datetime | None = None) -> str:
    """``accepted``, ``revoked``, ``expired`` or ``pending``."""
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.revoked_at is not None:
        return "revoked"
    if invitation.expires_at <= (now or timezone.now()):
        return "expired"
    return "pending"


@dataclass(frozen=True)
class InvitationLookup:
    """What a raw token opens: the invitation (None when the token matches none) and whether it
    can be used (``pending``) or why not (a key of ``INVITATION_REFUSALS``)."""

    invitation: Invitation | None
    state: str


def invitation_for_token(*, token: str, lock: bool = False) -> InvitationLookup:
    """The invitation a raw ``mri_`` token belongs to, compared in constant time. ``lock``
    takes the row for update (inside the caller's transaction)."""
    prefix = secrets.prefix_of(token or "", secrets.INVITATION)
    if prefix is None:
        return InvitationLookup(None, "invalid")
    qs = Invitation.objects.select_related("organization", "node", "invited_by")
    if lock:
        qs = qs.select_for_update(of=("self",))
    invitation = qs.filter(token_prefix=prefix).first()
    if invitation is None or not secrets.matches(token, invitation.token_digest):
        return InvitationLookup(None, "invalid")
    state = invitation_state(invitation)
    if state == "pending" and (
        invitation.node.archived_at is not None or invitation.organization.archived_at is not None
    ):
        state = "archived"
    return InvitationLookup(invitation, state)


def user_with_email_exists(email: str) -> bool:
    """Whether an account already uses this address (as its email or its username)."""
    email = (email or "").strip()
    return (
        get_user_model().objects.filter(Q(email__iexact=email) | Q(username__iexact=email)).exists()
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
SERVICE_TOKEN_FILTERS = {"node": ("node_id", int), "revoked": ("revoked_at", "present")}
SERVICE_TOKEN_SEARCH = ("name", "prefix")
AUDIT_FILTERS = {
    "action": ("action", str),
    "actor": ("actor_id", int),
    "target_type": ("target_type", str),
    "target_id": ("target_id", str),
    "since": ("created_at__gte", "datetime"),
    "until": ("created_at__lt", "datetime"),
}
