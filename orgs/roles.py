"""Roles and the permission matrix (docs/permissions.md is the written form of ROLE_PERMISSIONS).

A role held on a node grants its permissions on the node's whole subtree. Permissions are
django-guardian object permissions on ``orgs.Node`` (codenames below).
"""

from __future__ import annotations

from orgs.models import Role

VIEW_NODE = "view_node"
MANAGE_NODE = "manage_node"
VIEW_MEMBERS = "view_members"
MANAGE_MEMBERS = "manage_members"
VIEW_KEYS = "view_keys"
CREATE_KEYS = "create_keys"
MANAGE_KEYS = "manage_keys"
VIEW_BILLING = "view_billing"
MANAGE_BILLING = "manage_billing"
MANAGE_POLICIES = "manage_policies"
MANAGE_CREDENTIALS = "manage_credentials"
VIEW_AUDIT = "view_audit"

ALL_PERMISSIONS: tuple[str, ...] = (
    VIEW_NODE,
    MANAGE_NODE,
    VIEW_MEMBERS,
    MANAGE_MEMBERS,
    VIEW_KEYS,
    CREATE_KEYS,
    MANAGE_KEYS,
    VIEW_BILLING,
    MANAGE_BILLING,
    MANAGE_POLICIES,
    MANAGE_CREDENTIALS,
    VIEW_AUDIT,
)

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(ALL_PERMISSIONS),
    Role.ADMIN: frozenset(ALL_PERMISSIONS),
    Role.BILLING_MANAGER: frozenset(
        {VIEW_NODE, VIEW_MEMBERS, VIEW_KEYS, VIEW_BILLING, MANAGE_BILLING}
    ),
    Role.DEVELOPER: frozenset({VIEW_NODE, VIEW_MEMBERS, VIEW_KEYS, CREATE_KEYS}),
    Role.VIEWER: frozenset({VIEW_NODE, VIEW_MEMBERS, VIEW_KEYS, VIEW_BILLING}),
}

# Only an owner may grant, change or remove the owner role.
OWNER_ONLY_ROLES = frozenset({Role.OWNER})


def permissions_for(role: str) -> frozenset[str]:
    return ROLE_PERMISSIONS[role]


# ---------------------------------------------------------------- service token scopes
#
# A service token (``orgs.models.ServiceToken``) belongs to an organization, not a person. Each
# management API resource (``scope_resource`` on its ``OrgScopedViewSet``) has a ``:read`` scope
# for its GET requests and, when it can be changed, a ``:write`` scope for the rest. A scope
# also grants the permissions of this matrix the resource's actions need (their
# ``view_permission`` / ``action_permissions``); the token holds the union of its scopes'
# permissions on its node's subtree, and whoever creates it must hold each of them there.
# docs/management-api.md lists the scopes; tests/orgs/test_service_tokens.py walks every route
# and checks that the scope it asks for grants the permission its action needs.

SCOPE_PERMISSIONS: dict[str, frozenset[str]] = {
    "nodes:read": frozenset({VIEW_NODE}),
    "nodes:write": frozenset({VIEW_NODE, MANAGE_NODE}),
    "members:read": frozenset({VIEW_MEMBERS}),
    "members:write": frozenset({VIEW_MEMBERS, MANAGE_MEMBERS}),
    "invitations:read": frozenset({MANAGE_MEMBERS}),
    "invitations:write": frozenset({MANAGE_MEMBERS}),
    "keys:read": frozenset({VIEW_KEYS}),
    "keys:write": frozenset({VIEW_KEYS, CREATE_KEYS, MANAGE_KEYS}),
    "policies:read": frozenset({VIEW_NODE}),
    "policies:write": frozenset({VIEW_NODE, MANAGE_POLICIES}),
    "budgets:read": frozenset({VIEW_BILLING}),
    "budgets:write": frozenset({VIEW_BILLING, MANAGE_BILLING}),
    "billing:read": frozenset({VIEW_BILLING}),
    "billing:write": frozenset({VIEW_BILLING, MANAGE_BILLING}),
    "usage:read": frozenset({VIEW_BILLING}),
    "analytics:read": frozenset({VIEW_BILLING}),
    "reports:read": frozenset({VIEW_BILLING}),
    "reports:write": frozenset({VIEW_BILLING}),
    "audit:read": frozenset({VIEW_AUDIT}),
}
SCOPES: tuple[str, ...] = tuple(SCOPE_PERMISSIONS)
SCOPE_DESCRIPTIONS: dict[str, str] = {
    "nodes:read": "See the tree (departments, teams, projects)",
    "nodes:write": "Create, rename, move and archive nodes",
    "members:read": "See the members",
    "members:write": "Add, change and remove members",
    "invitations:read": "See invitations",
    "invitations:write": "Send and revoke invitations",
    "keys:read": "See API keys",
    "keys:write": "Change, rotate and revoke API keys",
    "policies:read": "See routing policies",
    "policies:write": "Set and remove routing policies",
    "budgets:read": "See budgets",
    "budgets:write": "Create, change and delete budgets",
    "billing:read": "See the balance, ledger, checkouts and notifications",
    "billing:write": "Start checkouts (buy credit)",
    "usage:read": "See usage records",
    "analytics:read": "Read spend analytics",
    "reports:read": "See and download reports",
    "reports:write": "Request reports",
    "audit:read": "See and export the audit log",
}


def scope_permissions(scopes: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    """The permissions a token with these scopes holds on its subtree."""
    out: set[str] = set()
    for scope in scopes:
        out |= SCOPE_PERMISSIONS.get(scope, frozenset())
    return frozenset(out)
