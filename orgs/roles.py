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
