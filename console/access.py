"""The console's tenancy choke point: ``OrgView``.

It mirrors the management API's ``orgs.api.base.OrgScopedViewSet`` with the same selectors, so
a page and the API always agree on who may see and change what:

- the organization comes from the URL (``org_slug``) among the caller's live organizations;
  anything else is 404, so another tenant's existence does not leak;
- ``permission`` (reads) and ``post_permission`` (writes) must be held somewhere in the
  organization, or on its root node when ``at_root`` is set; else 403;
- rows are fetched through ``scoped_get``: another organization's row or no row is 404, a row
  of the caller's organization outside the subtrees their role shows is 403;
- a write on one node checks the permission on that node (``require``), 403 when missing;
- an organization that requires MFA (``Organization.require_mfa``) sends a member whose session
  has not passed MFA to set it up (``/account/mfa/``) or, when they have it, to enter a code
  (``/login/mfa/``), before any of its pages (docs/identity.md).

Views never decide permissions themselves; they name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode
from django.views import View

from orgs.audit import Actor
from orgs.mfa import mfa_enabled, session_passes_mfa
from orgs.models import Node, NodeUserPermission, Organization
from orgs.selectors import has_perm_on_node, organizations_for_user, permitted_node_ids


@dataclass
class OrgScope:
    """The caller in one organization: which permissions they hold, anywhere and at the root.

    ``perms_anywhere`` / ``perms_at_root`` come from one query when the scope is built; checks on
    a specific node go through ``orgs.selectors.has_perm_on_node``.
    """

    organization: Organization
    user: Any
    actor: Actor
    perms_anywhere: frozenset[str]
    perms_at_root: frozenset[str]
    _visible: dict[str, set[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, *, organization: Organization, request: HttpRequest) -> OrgScope:
        rows = NodeUserPermission.objects.filter(
            user_id=request.user.pk,
            content_object__organization_id=organization.pk,
            content_object__archived_at__isnull=True,
        ).values_list("permission__codename", "content_object__parent_id")
        anywhere: set[str] = set()
        at_root: set[str] = set()
        for codename, parent_id in rows:
            anywhere.add(codename)
            if parent_id is None:
                at_root.add(codename)
        return cls(
            organization=organization,
            user=request.user,
            actor=Actor.from_request(request),
            perms_anywhere=frozenset(anywhere),
            perms_at_root=frozenset(at_root),
        )

    def can(self, perm: str) -> bool:
        return perm in self.perms_anywhere

    def can_at_root(self, perm: str) -> bool:
        return perm in self.perms_at_root

    def can_on(self, node: Node, perm: str) -> bool:
        if perm in self.perms_at_root:
            return True
        if perm not in self.perms_anywhere:
            return False
        return has_perm_on_node(user_id=self.user.pk, node=node, perm=perm)

    def require(self, node: Node | None, perm: str) -> None:
        """403 unless ``perm`` is held on ``node`` (``None``: on the organization's root)."""
        ok = self.can_at_root(perm) if node is None else self.can_on(node, perm)
        if not ok:
            raise PermissionDenied("Your role does not allow this here.")

    def visible_ids(self, perm: str) -> QuerySet[Any]:
        """Ids of the nodes where ``perm`` is held (a subquery: use with ``__in``)."""
        return permitted_node_ids(
            user_id=self.user.pk, organization_id=self.organization.pk, perm=perm
        )

    def visible_id_set(self, perm: str) -> set[int]:
        """The same ids, evaluated once per request (for per-row buttons in a table)."""
        if perm not in self._visible:
            self._visible[perm] = set(self.visible_ids(perm).values_list("id", flat=True))
        return self._visible[perm]


class OrgView(LoginRequiredMixin, View):
    """Base of every page inside an organization (``/o/<org_slug>/...``)."""

    permission: str = ""  # needed to GET
    post_permission: str | None = None  # needed to POST (None: POST is not allowed)
    at_root: bool = False  # whether the permission must be held organization-wide
    section: str = ""  # highlights the sidebar entry

    scope: OrgScope
    organization: Organization

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        org = organizations_for_user(user=request.user).filter(slug=kwargs.get("org_slug")).first()
        if org is None:
            raise Http404("No such organization.")
        if org.require_mfa and not session_passes_mfa(request, org):
            return mfa_redirect(request, org)
        self.organization = org
        self.scope = OrgScope.build(organization=org, request=request)
        if hasattr(request, "log_fields"):
            request.log_fields["organization_id"] = org.pk
        method = request.method.lower() if request.method else "get"
        if method in ("get", "head"):
            perm = self.permission
        elif method == "post" and self.post_permission is not None:
            perm = self.post_permission
        else:
            return self.http_method_not_allowed(request, *args, **kwargs)
        allowed = self.scope.can_at_root(perm) if self.at_root else self.scope.can(perm)
        if not allowed:
            raise PermissionDenied("Your role in this organization does not allow this.")
        return super().dispatch(request, *args, **kwargs)

    def scoped_get(
        self, queryset: QuerySet[Any], pk: Any, *, node_field: str | None, perm: str
    ) -> Any:
        """The row ``pk`` of this organization visible under ``perm`` (404 / 403 otherwise)."""
        in_org = queryset.filter(organization=self.organization, pk=pk)
        if node_field is None:
            obj = in_org.first()
            if obj is None:
                raise Http404
            if not self.scope.can_at_root(perm):
                raise PermissionDenied
            return obj
        obj = in_org.filter(**{f"{node_field}__in": self.scope.visible_ids(perm)}).first()
        if obj is None:
            if in_org.exists():
                raise PermissionDenied("Your role does not allow access to this object.")
            raise Http404
        return obj

    def base_context(self) -> dict[str, Any]:
        return {
            "org": self.organization,
            "scope": self.scope,
            "section": self.section,
        }


def mfa_redirect(request: HttpRequest, org: Organization) -> HttpResponse:
    """Where a member goes when ``org`` requires MFA and this session has not passed it."""
    query = urlencode({"next": request.get_full_path()})
    if mfa_enabled(request.user):
        return HttpResponseRedirect(f"{reverse('console:login-mfa')}?{query}")
    messages.info(
        request,
        f"{org.name} requires multi-factor authentication: set it up to continue.",
    )
    return HttpResponseRedirect(f"{reverse('console:mfa')}?{query}")


def node_of(obj: Model, node_field: str) -> Node:
    node: Any = obj
    for part in node_field.split("__"):
        node = getattr(node, part)
    assert isinstance(node, Node)
    return node
