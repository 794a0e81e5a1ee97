"""Management API views: parse, call one service, render."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from orgs import services
from orgs.api import serializers as s
from orgs.api.base import (
    MFA_REQUIRED,
    ManagementAPIMixin,
    OrgScopedViewSet,
    mfa_ok,
    mfa_ok_for_new_token,
)
from orgs.audit import Actor
from orgs.errors import InvalidInput, NotAllowed
from orgs.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Node,
    Organization,
    PersonalAccessToken,
    ServiceToken,
)
from orgs.roles import (
    CREATE_KEYS,
    MANAGE_MEMBERS,
    MANAGE_NODE,
    VIEW_AUDIT,
    VIEW_KEYS,
    VIEW_MEMBERS,
    VIEW_NODE,
)
from orgs.selectors import (
    AUDIT_FILTERS,
    KEY_FILTERS,
    KEY_SEARCH,
    MEMBER_FILTERS,
    MEMBER_SEARCH,
    NODE_FILTERS,
    NODE_SEARCH,
    SERVICE_TOKEN_FILTERS,
    SERVICE_TOKEN_SEARCH,
    has_perm_at_root,
    organizations_for_user,
    root_node,
    service_tokens_of,
)


def _with_root(qs: QuerySet[Organization]) -> QuerySet[Organization]:
    root = Node.objects.filter(organization=OuterRef("pk"), parent__isnull=True).values("id")
    return qs.annotate(root_node_id=Subquery(root[:1]))


@extend_schema(tags=["organizations"])
class OrganizationViewSet(
    ManagementAPIMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """The organizations you belong to. Creating one makes you its owner."""

    serializer_class = s.OrganizationOut
    lookup_field = "slug"
    lookup_url_kwarg = "org_slug"
    search_fields = ("name", "slug")

    def get_queryset(self) -> QuerySet[Organization]:
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        return _with_root(organizations_for_user(user=self.request.user))

    def get_object(self) -> Organization:
        """One organization; its MFA rule applies as in ``OrgScopedViewSet`` (403)."""
        org = super().get_object()
        if org.require_mfa and not mfa_ok(self.request):
            raise PermissionDenied(MFA_REQUIRED, code="mfa_required")
        return org

    @extend_schema(request=s.OrganizationCreateIn, responses={201: s.OrganizationOut})
    def create(self, request: Any) -> Response:
        data = _valid(s.OrganizationCreateIn, request.data)
        org = services.organization_create(
            actor=Actor.from_request(request), owner=request.user, **data
        )
        org = _with_root(Organization.objects.filter(pk=org.pk)).get()
        return Response(s.OrganizationOut(org).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.OrganizationUpdateIn, responses={200: s.OrganizationOut})
    def partial_update(self, request: Any, org_slug: str) -> Response:
        org = self.get_object()
        if not has_perm_at_root(user_id=request.user.pk, organization_id=org.pk, perm=MANAGE_NODE):
            raise NotAllowed("Only organization owners and admins can change it.")
        data = _valid(s.OrganizationUpdateIn, request.data)
        services.organization_update(
            actor=Actor.from_request(request),
            organization=org,
            name=data.get("name"),
            time_zone=data.get("time_zone"),
        )
        org = _with_root(Organization.objects.filter(pk=org.pk)).get()
        return Response(s.OrganizationOut(org).data)

    @extend_schema(request=s.NodeArchiveIn, responses={204: None})
    @action(detail=True, methods=["post"])
    def archive(self, request: Any, org_slug: str) -> Response:
        """Owners only. Live keys must be revoked with it (``revoke_keys: true``)."""
        org = self.get_object()
        data = _valid(s.NodeArchiveIn, request.data)
        services.organization_archive(
            actor=Actor.from_request(request), organization=org, revoke_keys=data["revoke_keys"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


def _valid(serializer_class: type[Any], data: Any, **kwargs: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _org_node(view: OrgScopedViewSet, field: str, node_id: int) -> Node:
    """A node of the URL's organization, else a 400 on ``field`` (ids of other organizations
    look exactly like ids that do not exist). Whether the caller may act on it is checked by
    ``view.require`` (403)."""
    node = Node.objects.filter(organization=view.organization, pk=node_id).first()
    if node is None:
        raise InvalidInput({field: [f'Invalid pk "{node_id}" - object does not exist.']})
    return node


@extend_schema(tags=["nodes"])
class NodeViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Departments, teams and projects (and the organization's root node).

    Archived nodes are hidden unless ``include_archived=true``."""

    serializer_class = s.NodeOut
    view_permission = VIEW_NODE
    scope_resource = "nodes"
    action_permissions = {
        "create": MANAGE_NODE,
        "partial_update": MANAGE_NODE,
        "move": MANAGE_NODE,
        "archive": MANAGE_NODE,
    }
    node_field = "pk"
    lookup_value_regex = r"\d+"
    list_filters = NODE_FILTERS
    search_fields = NODE_SEARCH

    def get_base_queryset(self) -> QuerySet[Node]:
        qs = Node.objects.all()
        include = self.request.query_params.get("include_archived", "").lower() == "true"
        if self.action == "list" and not include:
            qs = qs.filter(archived_at__isnull=True)
        return qs

    @extend_schema(request=s.NodeCreateIn, responses={201: s.NodeOut})
    def create(self, request: Any, org_slug: str) -> Response:
        data = _valid(s.NodeCreateIn, request.data)
        parent = _org_node(self, "parent", data["parent"])
        self.require(parent, MANAGE_NODE)
        node = services.node_create(
            actor=self.actor, parent=parent, name=data["name"], slug=data["slug"]
        )
        return Response(s.NodeOut(node).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.NodeUpdateIn, responses={200: s.NodeOut})
    def partial_update(self, request: Any, org_slug: str, pk: str) -> Response:
        node = self.get_object()
        data = _valid(s.NodeUpdateIn, request.data)
        node = services.node_update(actor=self.actor, node=node, **data)
        return Response(s.NodeOut(node).data)

    @extend_schema(request=s.NodeMoveIn, responses={200: s.NodeOut})
    @action(detail=True, methods=["post"])
    def move(self, request: Any, org_slug: str, pk: str) -> Response:
        node = self.get_object()
        data = _valid(s.NodeMoveIn, request.data)
        new_parent = _org_node(self, "parent", data["parent"])
        self.require(new_parent, MANAGE_NODE)
        node = services.node_move(actor=self.actor, node=node, new_parent=new_parent)
        return Response(s.NodeOut(node).data)

    @extend_schema(request=s.NodeArchiveIn, responses={200: s.NodeOut})
    @action(detail=True, methods=["post"])
    def archive(self, request: Any, org_slug: str, pk: str) -> Response:
        node = self.get_object()
        data = _valid(s.NodeArchiveIn, request.data)
        services.node_archive(actor=self.actor, node=node, revoke_keys=data["revoke_keys"])
        node.refresh_from_db()
        return Response(s.NodeOut(node).data)


@extend_schema(tags=["members"])
class MemberViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Memberships: a user's role on a node (and its subtree). Ended memberships are hidden
    unless ``include_removed=true``; DELETE ends a membership."""

    serializer_class = s.MemberOut
    view_permission = VIEW_MEMBERS
    scope_resource = "members"
    action_permissions = {
        "create": MANAGE_MEMBERS,
        "partial_update": MANAGE_MEMBERS,
        "destroy": MANAGE_MEMBERS,
    }
    node_field = "node"
    lookup_value_regex = r"\d+"
    list_filters = MEMBER_FILTERS
    search_fields = MEMBER_SEARCH

    def get_base_queryset(self) -> QuerySet[Membership]:
        qs = Membership.objects.select_related("user", "node")
        include = self.request.query_params.get("include_removed", "").lower() == "true"
        if self.action == "list" and not include:
            qs = qs.filter(removed_at__isnull=True)
        return qs

    @extend_schema(request=s.MemberCreateIn, responses={201: s.MemberOut})
    def create(self, request: Any, org_slug: str) -> Response:
        data = _valid(s.MemberCreateIn, request.data)
        node = _org_node(self, "node", data["node"])
        self.require(node, MANAGE_MEMBERS)
        user = get_user_model().objects.filter(username=data["username"], is_active=True).first()
        if user is None:
            raise InvalidInput(
                {"username": ["No active user has this username; send an invitation instead."]}
            )
        membership = services.membership_create(
            actor=self.actor, node=node, user=user, role=data["role"]
        )
        return Response(s.MemberOut(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.MemberUpdateIn, responses={200: s.MemberOut})
    def partial_update(self, request: Any, org_slug: str, pk: str) -> Response:
        membership = self.get_object()
        data = _valid(s.MemberUpdateIn, request.data)
        membership = services.membership_update(
            actor=self.actor, membership=membership, role=data["role"]
        )
        return Response(s.MemberOut(membership).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Any, org_slug: str, pk: str) -> Response:
        membership = self.get_object()
        services.membership_remove(actor=self.actor, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["invitations"])
class InvitationViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Email invitations (single use, expiring). The token is emailed, never returned again."""

    serializer_class = s.InvitationOut
    view_permission = MANAGE_MEMBERS
    scope_resource = "invitations"
    action_permissions = {"create": MANAGE_MEMBERS, "revoke": MANAGE_MEMBERS}
    node_field = "node"
    lookup_value_regex = r"\d+"
    list_filters = {"node": ("node_id", int), "email": ("email__iexact", str)}
    search_fields = ("email",)

    def get_base_queryset(self) -> QuerySet[Invitation]:
        return Invitation.objects.select_related("invited_by", "node")

    @extend_schema(request=s.InvitationCreateIn, responses={201: s.InvitationOut})
    def create(self, request: Any, org_slug: str) -> Response:
        data = _valid(s.InvitationCreateIn, request.data)
        node = _org_node(self, "node", data["node"])
        self.require(node, MANAGE_MEMBERS)
        created = services.invitation_create(
            actor=self.actor,
            node=node,
            email=data["email"],
            role=data["role"],
            ttl=dt.timedelta(hours=data["ttl_hours"]),
        )
        return Response(s.InvitationOut(created.invitation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: s.InvitationOut})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Any, org_slug: str, pk: str) -> Response:
        invitation = self.get_object()
        invitation = services.invitation_revoke(actor=self.actor, invitation=invitation)
        return Response(s.InvitationOut(invitation).data)


@extend_schema(tags=["api keys"])
class ApiKeyViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Gateway API keys. The secret is returned once, by create and rotate. Developers manage
    the keys they created; owners and admins manage every key in their subtree."""

    serializer_class = s.ApiKeyOut
    view_permission = VIEW_KEYS
    scope_resource = "keys"
    action_permissions = {
        "create": CREATE_KEYS,
        "partial_update": CREATE_KEYS,
        "revoke": CREATE_KEYS,
        "rotate": CREATE_KEYS,
    }
    node_field = "project"
    lookup_value_regex = r"\d+"
    list_filters = KEY_FILTERS
    search_fields = KEY_SEARCH

    def get_base_queryset(self) -> QuerySet[ApiKey]:
        return ApiKey.objects.select_related("membership", "project")

    def _fields(self, data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k != "project"}

    @extend_schema(request=s.ApiKeyCreateIn, responses={201: s.ApiKeyCreatedOut})
    def create(self, request: Any, org_slug: str) -> Response:
        data = _valid(s.ApiKeyCreateIn, request.data)
        project = _org_node(self, "project", data["project"])
        self.require(project, CREATE_KEYS)
        created = services.api_key_create(actor=self.actor, project=project, **self._fields(data))
        return Response(
            s.created_key_payload(created.api_key, created.raw_key),
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=s.ApiKeyUpdateIn, responses={200: s.ApiKeyOut})
    def partial_update(self, request: Any, org_slug: str, pk: str) -> Response:
        api_key = self.get_object()
        data = _valid(s.ApiKeyUpdateIn, request.data, partial=True)
        api_key = services.api_key_update(actor=self.actor, api_key=api_key, **data)
        return Response(s.ApiKeyOut(api_key).data)

    @extend_schema(request=None, responses={200: s.ApiKeyOut})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Any, org_slug: str, pk: str) -> Response:
        api_key = services.api_key_revoke(actor=self.actor, api_key=self.get_object())
        return Response(s.ApiKeyOut(api_key).data)

    @extend_schema(request=s.ApiKeyRotateIn, responses={200: s.ApiKeyCreatedOut})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Any, org_slug: str, pk: str) -> Response:
        api_key = self.get_object()
        data = _valid(s.ApiKeyRotateIn, request.data)
        created = services.api_key_rotate(
            actor=self.actor, api_key=api_key, grace=dt.timedelta(seconds=data["grace_seconds"])
        )
        return Response(s.created_key_payload(created.api_key, created.raw_key))


@extend_schema(tags=["service tokens"])
class ServiceTokenViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The organization's service tokens (``Authorization: Token mrs_...``): they belong to the
    organization, hold only their scopes, on their node's subtree. The secret is returned once,
    by create. Managing them needs ``manage_members`` on the token's node, and a creator's role
    there must cover every scope asked for. Service tokens cannot manage service tokens."""

    serializer_class = s.ServiceTokenOut
    view_permission = MANAGE_MEMBERS
    action_permissions = {
        "create": MANAGE_MEMBERS,
        "partial_update": MANAGE_MEMBERS,
        "revoke": MANAGE_MEMBERS,
    }
    node_field = "node"
    scope_resource = None  # people only: a token never mints or extends tokens
    lookup_value_regex = r"\d+"
    list_filters = SERVICE_TOKEN_FILTERS
    search_fields = SERVICE_TOKEN_SEARCH

    def get_base_queryset(self) -> QuerySet[ServiceToken]:
        return service_tokens_of(organization=self.organization)

    @extend_schema(request=s.ServiceTokenCreateIn, responses={201: s.ServiceTokenCreatedOut})
    def create(self, request: Any, org_slug: str) -> Response:
        data = _valid(s.ServiceTokenCreateIn, request.data)
        if "node" in data:
            node = _org_node(self, "node", data["node"])
        else:
            node = root_node(self.organization)
        self.require(node, MANAGE_MEMBERS)
        created = services.service_token_create(
            actor=self.actor,
            node=node,
            name=data["name"],
            scopes=data["scopes"],
            expires_at=data.get("expires_at"),
        )
        payload = dict(s.ServiceTokenOut(created.token).data)
        payload["token"] = created.raw_token
        return Response(payload, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ServiceTokenUpdateIn, responses={200: s.ServiceTokenOut})
    def partial_update(self, request: Any, org_slug: str, pk: str) -> Response:
        """Change the expiry (``null``: never expires)."""
        token = self.get_object()
        data = _valid(s.ServiceTokenUpdateIn, request.data)
        token = services.service_token_update(
            actor=self.actor, token=token, expires_at=data["expires_at"]
        )
        return Response(s.ServiceTokenOut(token).data)

    @extend_schema(request=None, responses={200: s.ServiceTokenOut})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Any, org_slug: str, pk: str) -> Response:
        token = services.service_token_revoke(actor=self.actor, token=self.get_object())
        return Response(s.ServiceTokenOut(token).data)


def _csv_safe(value: Any) -> str:
    text = "" if value is None else str(value)
    # Spreadsheet formula injection: a cell must not start with = + - @ (or tab / CR).
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text


class _Echo:
    def write(self, value: str) -> str:
        return value


@extend_schema(tags=["audit"])
class AuditEventViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The organization's audit log (owners and admins at the organization level)."""

    serializer_class = s.AuditEventOut
    view_permission = VIEW_AUDIT
    scope_resource = "audit"
    action_permissions = {"export": VIEW_AUDIT}
    node_field = None
    lookup_value_regex = r"\d+"
    list_filters = AUDIT_FILTERS

    def get_base_queryset(self) -> QuerySet[AuditEvent]:
        return AuditEvent.objects.all()

    @extend_schema(responses={(200, "text/csv"): OpenApiResponse(description="CSV file")})
    @action(detail=False, methods=["get"])
    def export(self, request: Any, org_slug: str) -> StreamingHttpResponse:
        qs = self.filter_queryset(self.get_queryset()).order_by("id")
        columns = [
            "id",
            "created_at",
            "actor_id",
            "actor_label",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "changes",
            "ip",
            "request_id",
        ]
        writer = csv.writer(_Echo())

        def rows() -> Iterator[str]:
            import json

            yield writer.writerow(columns)
            for event in qs.iterator(chunk_size=2000):
                yield writer.writerow(
                    [
                        event.pk,
                        event.created_at.isoformat(),
                        event.actor_id or "",
                        _csv_safe(event.actor_label),
                        _csv_safe(event.action),
                        _csv_safe(event.target_type),
                        _csv_safe(event.target_id),
                        _csv_safe(event.target_repr),
                        _csv_safe(json.dumps(event.changes, sort_keys=True)),
                        event.ip or "",
                        _csv_safe(event.request_id),
                    ]
                )

        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="audit-{self.organization.slug}-{stamp}.csv"'
        )
        return response


@extend_schema(tags=["invitations"])
class InvitationAcceptView(ManagementAPIMixin, viewsets.ViewSet):
    """Accept an invitation as the logged-in user (whose email must match)."""

    @extend_schema(request=s.InvitationAcceptIn, responses={201: s.MemberOut})
    def create(self, request: Any) -> Response:
        data = _valid(s.InvitationAcceptIn, request.data)
        membership = services.invitation_accept(
            actor=Actor.from_request(request), token=data["token"]
        )
        return Response(s.MemberOut(membership).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["access tokens"])
class AccessTokenViewSet(
    ManagementAPIMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Your personal access tokens for automation (``Authorization: Token mrp_...``). DELETE
    revokes."""

    serializer_class = s.AccessTokenOut
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[PersonalAccessToken]:
        if getattr(self, "swagger_fake_view", False):
            return PersonalAccessToken.objects.none()
        return PersonalAccessToken.objects.filter(user=self.request.user)

    @extend_schema(request=s.AccessTokenCreateIn, responses={201: s.AccessTokenCreatedOut})
    def create(self, request: Any) -> Response:
        if not mfa_ok_for_new_token(request):
            raise PermissionDenied(MFA_REQUIRED, code="mfa_required")
        data = _valid(s.AccessTokenCreateIn, request.data)
        created = services.access_token_create(
            user=request.user, name=data["name"], expires_at=data.get("expires_at")
        )
        payload = dict(s.AccessTokenOut(created.token).data)
        payload["token"] = created.raw_token
        return Response(payload, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request: Any, pk: str) -> Response:
        token = self.get_object()
        if token is None:
            raise Http404
        services.access_token_revoke(token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)
