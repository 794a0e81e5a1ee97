"""Tenancy: organizations, the node tree, memberships and roles, API keys, audit events.

The tree has four levels. ``Organization`` is the tenant (every tenant-owned row carries an
``organization`` foreign key). Each organization owns exactly one root ``Node`` (kind
``organization``) and under it ``department`` > ``team`` > ``project`` nodes. A node's ``path``
is the materialized list of ids from the root down to itself (``/12/40/77/``) so a whole subtree
is one indexed prefix query, and the department / team / project ids of any node can be read
from its path without a join.

A ``Membership`` gives a user a role on a node; the role applies to the node's whole subtree.
Roles are mirrored into django-guardian object permissions on the node (``NodeUserPermission``,
a direct foreign-key permission table), so "nodes where user U may do P" is one id subquery.

Secrets (API keys, personal access tokens, invitation tokens) are never stored: only a lookup
prefix and an HMAC digest keyed with a server secret (see ``orgs.secrets``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from guardian.models import UserObjectPermissionBase


class Organization(models.Model):
    """The tenant."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    # IANA zone used for budget periods and reports (validated against zoneinfo).
    time_zone = models.CharField(max_length=64, default="UTC")
    # Members must pass MFA to open any of its console pages (console.access.OrgView) or call
    # its management API from a browser session (docs/identity.md).
    require_mfa = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class NodeKind(models.TextChoices):
    ORGANIZATION = "organization", "Organization"
    DEPARTMENT = "department", "Department"
    TEAM = "team", "Team"
    PROJECT = "project", "Project"


# depth of each kind in the tree; a node's parent has depth - 1.
NODE_DEPTH = {
    NodeKind.ORGANIZATION: 0,
    NodeKind.DEPARTMENT: 1,
    NodeKind.TEAM: 2,
    NodeKind.PROJECT: 3,
}
PARENT_KIND = {
    NodeKind.DEPARTMENT: NodeKind.ORGANIZATION,
    NodeKind.TEAM: NodeKind.DEPARTMENT,
    NodeKind.PROJECT: NodeKind.TEAM,
}


class Node(models.Model):
    """One place in an organization's tree: its root, a department, a team or a project."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="nodes")
    kind = models.CharField(max_length=16, choices=NodeKind.choices)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80)
    # "/<root id>/<department id>/<team id>/<project id>/", always ending in this node's id.
    path = models.CharField(max_length=255, db_index=True, default="")
    depth = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["path"]
        constraints = [
            models.UniqueConstraint(
                fields=["parent", "slug"],
                condition=Q(parent__isnull=False),
                name="orgs_node_unique_slug_among_siblings",
            ),
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(parent__isnull=True),
                name="orgs_node_one_root_per_organization",
            ),
        ]
        indexes = [models.Index(fields=["organization", "kind"], name="orgs_node_org_kind")]
        permissions = [
            ("manage_node", "Create, rename, move and archive nodes below"),
            ("view_members", "See the members"),
            ("manage_members", "Invite, change and remove members"),
            ("view_keys", "See API keys"),
            ("create_keys", "Create API keys and manage one's own"),
            ("manage_keys", "Manage every API key"),
            ("view_billing", "See budgets, usage and reports"),
            ("manage_billing", "Change budgets and billing settings"),
            ("manage_policies", "Change routing policies"),
            ("manage_credentials", "Change provider credentials"),
            ("view_audit", "See and export the audit log"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.slug}"

    @property
    def ancestor_ids(self) -> list[int]:
        """Ids from the root down to this node, read from the path."""
        return [int(part) for part in self.path.strip("/").split("/") if part]


class NodeUserPermission(UserObjectPermissionBase):
    """django-guardian object permission with a real foreign key to the node."""

    content_object = models.ForeignKey(Node, on_delete=models.CASCADE)

    class Meta(UserObjectPermissionBase.Meta):
        abstract = False


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    BILLING_MANAGER = "billing_manager", "Billing manager"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


class Membership(models.Model):
    """A user's role on a node (and so on its whole subtree).

    A user may hold several memberships in one organization (one per node) and memberships in
    several organizations. Leaving sets ``removed_at`` (rows are kept for audit and billing
    history); keys created under a removed membership stop working.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=32, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "node"],
                condition=Q(removed_at__isnull=True),
                name="orgs_membership_one_active_per_user_node",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "user"], name="orgs_membership_org_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.node_id}:{self.role}"


class Invitation(models.Model):
    """An emailed, single-use, expiring invitation to take a role on a node."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=32, choices=Role.choices)
    token_prefix = models.CharField(max_length=16, unique=True)
    token_digest = models.CharField(max_length=64)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    membership = models.ForeignKey(
        Membership, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"invitation {self.token_prefix} for {self.email}"


class ApiKey(models.Model):
    """A gateway key (what developers put in ``Authorization: Bearer``).

    The logical key: its name, owner, project, limits and policy. Its secrets live in
    ``ApiKeySecret`` so rotation keeps the same key row (and whatever budgets point at it) while
    the previous secret stays valid for a grace period. ``prefix`` repeats the current secret's
    lookup prefix for display.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    project = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="api_keys")
    membership = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, db_index=True)
    # Model ids or glob patterns ("openai/*"); empty means every model.
    allowed_models = models.JSONField(default=list, blank=True)
    # CIDRs; empty means any address.
    ip_allowlist = models.JSONField(default=list, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    # Routing policy override, validated by orgs.policy (strategy, allowed/blocked models, ...).
    routing_policy = models.JSONField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["organization", "project"], name="orgs_apikey_org_project"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"


class ApiKeySecret(models.Model):
    """One secret of an API key: lookup prefix + HMAC digest. Several during a rotation."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="secrets")
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when the key is rotated: the old secret keeps working until then.
    valid_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.prefix


class PersonalAccessToken(models.Model):
    """A user's token for the management API (``Authorization: Token mrp_...``)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"


class LoginSession(models.Model):
    """A console session started by logging in (``orgs.login_sessions``): listed on the user's
    sessions page and ended from there. ``session_key`` is the session store's key (the same
    secret Django's session table holds), so ending a row deletes its session."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="login_sessions"
    )
    session_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=200, blank=True)
    mfa = models.BooleanField(default=False)  # the session passed multi-factor authentication
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # the sessions page: a user's live rows
        indexes = [models.Index(fields=["user", "ended_at"], name="loginsession_user_live")]

    def __str__(self) -> str:
        return f"session of {self.user_id} from {self.ip or 'unknown'}"


class ServiceToken(models.Model):
    """An organization's token for the management API (``Authorization: Token mrs_...``): it
    belongs to the organization, not a person, holds only its ``scopes`` (``orgs.roles.SCOPES``)
    and only on ``node``'s subtree (the root node: the whole organization)."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="service_tokens"
    )
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="service_tokens")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"


class AuditEvent(models.Model):
    """Who changed what, written in the same transaction as the change. Never holds secrets."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # Username (or "system") at the time of the event, kept if the user is deleted.
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=64)  # "<entity>.<verb>", e.g. "api_key.revoke"
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=200, blank=True, default="")
    changes = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["organization", "-id"], name="orgs_audit_org_id"),
            models.Index(fields=["organization", "action"], name="orgs_audit_org_action"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id}"
