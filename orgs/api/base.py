"""THE tenancy choke point for management API views: ``OrgScopedViewSet``.

Before any handler runs, ``initial`` resolves the organization from the URL (``org_slug``) among
the caller's organizations (anything else is 404, so existence does not leak), checks that a
service token holds the request's scope (``<scope_resource>:read`` for GET / HEAD / OPTIONS,
``:write`` otherwise; else 403 naming it) and that the caller holds the action's permission
somewhere in it (else 403). A service token's permissions are its scopes' (``orgs.roles.
SCOPE_PERMISSIONS``) on its node's subtree; a person's are their roles' grants. Views that are
not organization-scoped (``scope_resource`` None) refuse service tokens.

``get_queryset`` is final: it takes the subclass's ``get_base_queryset()`` and restricts it to
the organization and, through one id subquery, to the subtrees where the caller holds
``view_permission``. Rows outside that answer 404. Writes check the action's permission on the
row's node (403 when missing).

Subclasses set:
- ``view_permission``: the permission needed to see rows (e.g. ``"view_keys"``);
- ``action_permissions``: ``{action: permission}`` for writes (default: ``view_permission`` for
  safe actions; an action missing from the map is refused);
- ``node_field``: the lookup from the model to the Node that governs it (``"project"``), or
  ``None`` for organization-wide rows, which need the permission on the root node;
- ``get_base_queryset()``: the model's queryset with its select_related (selectors own those);
- ``scope_resource``: the resource's name in the service token scopes (``"budgets"``).

Other apps subclass it: ``class BudgetViewSet(OrgScopedViewSet): view_permission =
"view_billing"; action_permissions = {"create": "manage_billing", ...}; node_field = "node"``.
"""

from __future__ import annotations

from typing import Any, final

from django.db.models import Model, QuerySet
from django.http import Http404
from rest_framework import viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, IsAuthenticated

from orgs.api.authentication import (
    AccessTokenAuthentication,
    ServiceTokenAuthentication,
    service_token_of,
)
from orgs.api.errors import management_exception_handler
from orgs.api.filters import DeclaredFilters
from orgs.audit import Actor
from orgs.errors import NotAllowed
from orgs.mfa import organizations_requiring_mfa, session_passes_mfa, session_verified
from orgs.models import Node, Organization, ServiceToken
from orgs.roles import scope_permissions
from orgs.selectors import (
    has_perm_anywhere,
    has_perm_at_root,
    has_perm_on_node,
    organizations_for_service_token,
    organizations_for_user,
    permitted_node_ids,
    service_token_may,
    service_token_may_at_root,
    service_token_node_ids,
)

SAFE_ACTIONS = frozenset({"list", "retrieve", "metadata"})
MFA_REQUIRED = (
    "This organization requires multi-factor authentication: log in to the console with it, "
    "or use a personal access token."
)


def mfa_ok(request: Any, organization: Organization | None = None) -> bool:
    """The MFA rule of the management API (docs/identity.md): a personal access token or a
    service token passes; a browser session passes once it has passed MFA, or for the
    organization whose identity provider signed it in."""
    if isinstance(
        request.successful_authenticator, (AccessTokenAuthentication, ServiceTokenAuthentication)
    ):
        return True
    if organization is not None:
        return session_passes_mfa(request, organization)
    return session_verified(request.user)


def mfa_ok_for_new_token(request: Any) -> bool:
    """A session may create a personal access token once it has passed MFA, or while none of
    the user's organizations requires it (so a token cannot be a way around the rule)."""
    if mfa_ok(request):
        return True
    return not organizations_requiring_mfa(request.user).exists()


class ManagementAPIMixin:
    """Authentication, error shape and filtering shared by every management API view."""

    authentication_classes = [
        ServiceTokenAuthentication,
        AccessTokenAuthentication,
        SessionAuthentication,
    ]
    permission_classes = [IsAuthenticated]
    filter_backends = [DeclaredFilters]
    list_filters: dict[str, tuple[str, Any]] = {}
    search_fields: tuple[str, ...] = ()
    # The resource's name in service token scopes; None: service tokens are refused here.
    scope_resource: str | None = None

    def get_exception_handler(self) -> Any:
        return management_exception_handler

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        if self.scope_resource is None and service_token_of(request) is not None:
            raise PermissionDenied(
                "Service tokens work only on an organization's resources "
                "(/api/orgs/{org}/...); this endpoint is for people.",
                code="service_token_not_allowed",
            )

    def required_scope(self) -> str | None:
        """The scope a service token needs for this request (None: refused to tokens)."""
        if self.scope_resource is None:
            return None
        access = "read" if self.request.method in SAFE_METHODS else "write"
        return f"{self.scope_resource}:{access}"


class OrgScopedViewSet(ManagementAPIMixin, viewsets.GenericViewSet):
    view_permission: str = ""
    action_permissions: dict[str, str] = {}
    node_field: str | None = "node"

    organization: Organization
    actor: Actor

    # -- hooks for subclasses ------------------------------------------------------------
    def get_base_queryset(self) -> QuerySet[Any]:
        raise NotImplementedError

    # -- the choke point -----------------------------------------------------------------
    service_token: ServiceToken | None = None

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication, IsAuthenticated, tokens
        if getattr(self, "swagger_fake_view", False):
            return
        slug = self.kwargs.get("org_slug", "")
        self.service_token = token = service_token_of(request)
        if token is not None:
            orgs = organizations_for_service_token(token=token)
        else:
            orgs = organizations_for_user(user=request.user)
        org = orgs.filter(slug=slug).first()
        if org is None:
            raise Http404
        if org.require_mfa and not mfa_ok(request, org):
            raise PermissionDenied(MFA_REQUIRED, code="mfa_required")
        self.organization = org
        self.actor = Actor.from_request(request)
        if hasattr(request, "log_fields"):
            request.log_fields["organization_id"] = org.pk
            if token is not None:
                request.log_fields["service_token_id"] = token.pk
        scope = self.required_scope()
        if token is not None and scope not in token.scopes:
            raise PermissionDenied(
                f"This service token lacks the scope {scope}.", code="missing_scope"
            )
        perm = self.required_permission()
        allowed = self.holds_at_root(perm) if self.node_field is None else self.holds(perm)
        if not allowed:
            if token is not None and self.holds(perm):
                raise PermissionDenied(
                    "This endpoint is organization-wide; this service token is limited to "
                    f"{token.node.name}.",
                    code="permission_denied",
                )
            if token is not None:
                raise PermissionDenied(
                    f"This service token's scopes do not grant {perm}.", code="permission_denied"
                )
            raise PermissionDenied(
                "Your role in this organization does not allow this.", code="permission_denied"
            )

    # -- who holds what: the caller's role grants, or a service token's scopes on its subtree
    def holds(self, perm: str) -> bool:
        """Whether the caller holds ``perm`` somewhere in the organization."""
        if self.service_token is not None:
            return perm in scope_permissions(self.service_token.scopes)
        return has_perm_anywhere(
            user_id=self.request.user.pk, organization_id=self.organization.pk, perm=perm
        )

    def holds_at_root(self, perm: str) -> bool:
        """Whether the caller holds ``perm`` organization-wide."""
        if self.service_token is not None:
            return service_token_may_at_root(token=self.service_token, perm=perm)
        return has_perm_at_root(
            user_id=self.request.user.pk, organization_id=self.organization.pk, perm=perm
        )

    def holds_on(self, node: Node, perm: str) -> bool:
        if self.service_token is not None:
            return service_token_may(token=self.service_token, node=node, perm=perm)
        return has_perm_on_node(user_id=self.request.user.pk, node=node, perm=perm)

    def visible_node_ids(self, perm: str) -> QuerySet[Any]:
        """Ids of the organization's nodes where the caller holds ``perm`` (a subquery)."""
        if self.service_token is not None:
            return service_token_node_ids(token=self.service_token, perm=perm)
        return permitted_node_ids(
            user_id=self.request.user.pk, organization_id=self.organization.pk, perm=perm
        )

    def required_permission(self) -> str:
        action = self.action or ""
        if action in self.action_permissions:
            return self.action_permissions[action]
        if action in SAFE_ACTIONS:
            return self.view_permission
        raise PermissionDenied(f"No permission is defined for {action!r}.")

    @final
    def get_queryset(self) -> QuerySet[Any]:
        qs = self.get_base_queryset()
        if getattr(self, "swagger_fake_view", False):
            return qs.none()
        qs = qs.filter(organization=self.organization)
        if self.node_field is not None:
            visible = self.visible_node_ids(self.view_permission)
            qs = qs.filter(**{f"{self.node_field}__in": visible})
        return qs

    def get_object(self) -> Any:
        try:
            obj = super().get_object()  # only rows of the visible set
        except Http404:
            # In the caller's own organization but outside what their role shows: 403.
            # Anything else (another organization's row, no such row): 404.
            lookup = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)
            in_org = self.get_base_queryset().filter(
                organization=self.organization, **{self.lookup_field: lookup}
            )
            if in_org.exists():
                raise NotAllowed("Your role does not allow access to this object.") from None
            raise
        if self.action not in SAFE_ACTIONS:
            self.require(self.node_of(obj), self.required_permission())
        return obj

    # -- helpers for handlers --------------------------------------------------------------
    def node_of(self, obj: Model) -> Node | None:
        if self.node_field is None:
            return None
        if self.node_field == "pk":
            assert isinstance(obj, Node)
            return obj
        node = obj
        for part in self.node_field.split("__"):
            node = getattr(node, part)
        assert isinstance(node, Node)
        return node

    def require(self, node: Node | None, perm: str) -> None:
        """403 unless the caller holds ``perm`` on ``node`` (None: on the root)."""
        ok = self.holds_at_root(perm) if node is None else self.holds_on(node, perm)
        if not ok:
            raise NotAllowed("Your role does not allow this here.")
