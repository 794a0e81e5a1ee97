"""Management API of single sign-on (docs/management-api.md): an organization's identity
providers and their group mappings. Owners only, like the console's pages; the tenancy is
``orgs.api.base.OrgScopedViewSet``'s (rows of the URL's organization only, 404 otherwise)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.response import Response

from identity import services
from identity.api import serializers as s
from identity.models import GroupMapping, IdentityProvider
from orgs.api.base import OrgScopedViewSet
from orgs.errors import InvalidInput, NotAllowed
from orgs.models import Node
from orgs.roles import MANAGE_MEMBERS
from orgs.selectors import is_owner_over, root_node


def _valid(serializer_class: type[Any], data: Any, **kwargs: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class _OwnerViewSet(OrgScopedViewSet):
    view_permission = MANAGE_MEMBERS
    action_permissions = {
        "create": MANAGE_MEMBERS,
        "partial_update": MANAGE_MEMBERS,
        "destroy": MANAGE_MEMBERS,
    }
    node_field = None  # organization-wide rows: the permission at the root
    lookup_value_regex = r"\d+"

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if getattr(self, "swagger_fake_view", False):
            return
        if not is_owner_over(user_id=request.user.pk, node=root_node(self.organization)):
            raise NotAllowed("Only an owner of the organization configures single sign-on.")


@extend_schema(tags=["single sign-on"])
class IdentityProviderViewSet(_OwnerViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """OpenID Connect providers. The client secret is write-only; saving checks that the
    discovery URL answers with an OpenID configuration."""

    serializer_class = s.IdentityProviderOut
    list_filters = {"enabled": ("enabled", bool)}

    def get_base_queryset(self) -> QuerySet[IdentityProvider]:
        return IdentityProvider.objects.prefetch_related("domains")

    @extend_schema(request=s.IdentityProviderIn, responses={201: s.IdentityProviderOut})
    def create(self, request: Any, org_slug: str) -> Response:
        data = _valid(s.IdentityProviderIn, request.data)
        if "client_secret" not in data:
            raise InvalidInput({"client_secret": ["This field is required."]})
        provider = services.identity_provider_create(
            actor=self.actor, organization=self.organization, **data
        )
        provider = self.get_base_queryset().get(pk=provider.pk)
        return Response(s.IdentityProviderOut(provider).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.IdentityProviderIn, responses={200: s.IdentityProviderOut})
    def partial_update(self, request: Any, org_slug: str, pk: str) -> Response:
        provider = self.get_object()
        data = _valid(s.IdentityProviderIn, request.data, partial=True)
        services.identity_provider_update(actor=self.actor, provider=provider, **data)
        provider = self.get_base_queryset().get(pk=provider.pk)
        return Response(s.IdentityProviderOut(provider).data)


@extend_schema(tags=["single sign-on"])
class GroupMappingViewSet(_OwnerViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Group claim value -> role on a node, per provider; applied at each user's next
    sign-in."""

    serializer_class = s.GroupMappingOut
    list_filters = {"identity_provider": ("identity_provider_id", int), "group": ("group", str)}

    def get_base_queryset(self) -> QuerySet[GroupMapping]:
        return GroupMapping.objects.select_related("identity_provider")

    @extend_schema(request=s.GroupMappingIn, responses={201: s.GroupMappingOut})
    def create(self, request: Any, org_slug: str) -> Response:
        data = _valid(s.GroupMappingIn, request.data)
        errors: dict[str, list[str]] = {}
        # ids of another organization read exactly like ids that do not exist
        provider = IdentityProvider.objects.filter(
            organization=self.organization, pk=data["identity_provider"]
        ).first()
        if provider is None:
            errors["identity_provider"] = [
                f'Invalid pk "{data["identity_provider"]}" - object does not exist.'
            ]
        node = Node.objects.filter(organization=self.organization, pk=data["node"]).first()
        if node is None:
            errors["node"] = [f'Invalid pk "{data["node"]}" - object does not exist.']
        if errors:
            raise InvalidInput(errors)
        assert provider is not None and node is not None
        mapping = services.group_mapping_create(
            actor=self.actor, provider=provider, group=data["group"], node=node, role=data["role"]
        )
        return Response(s.GroupMappingOut(mapping).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request: Any, org_slug: str, pk: str) -> Response:
        services.group_mapping_delete(actor=self.actor, mapping=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
