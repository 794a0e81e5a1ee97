"""Routing policies on the management API: ``/api/orgs/<org>/routing-policies/``.

Everyone who can see a node sees its policy (``view_node``); changing one needs
``manage_policies`` on the node (owners and admins). The tenancy choke point is orgs'
``OrgScopedViewSet``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from orgs.api.base import OrgScopedViewSet
from orgs.errors import InvalidInput
from orgs.models import Node
from orgs.roles import MANAGE_POLICIES, VIEW_NODE
from routing.api import serializers as s
from routing.catalog import catalog_snapshot
from routing.policies import (
    PolicyError,
    policy_catalog_warnings,
    policy_merge,
    policy_table,
    routing_policy_delete,
    routing_policy_set,
)
from routing.policy_models import RoutingPolicy


def _valid(serializer_class: type[Any], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _set(view: RoutingPolicyViewSet, node: Node, document: dict[str, Any]) -> dict[str, Any]:
    """The policy set, as the answer: the policy and ``warnings`` (its entries that name
    nothing in the catalog today, per field; saved all the same)."""
    try:
        policy = routing_policy_set(actor=view.actor, node=node, data=document)
    except PolicyError as error:
        raise InvalidInput({f"policy.{k}": v for k, v in error.errors.items()}) from None
    warnings = policy_catalog_warnings(policy.document, catalog_snapshot(max_age=0))
    return {**s.RoutingPolicyOut(policy).data, "warnings": warnings}


@extend_schema(tags=["routing"])
class RoutingPolicyViewSet(
    OrgScopedViewSet,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
):
    serializer_class = s.RoutingPolicyOut
    view_permission = VIEW_NODE
    scope_resource = "policies"
    action_permissions = {
        "create": MANAGE_POLICIES,
        "update": MANAGE_POLICIES,
        "destroy": MANAGE_POLICIES,
        "effective": VIEW_NODE,
    }
    node_field = "node"
    lookup_value_regex = r"\d+"
    list_filters = {"node": ("node_id", int)}

    def get_base_queryset(self) -> QuerySet[RoutingPolicy]:
        return RoutingPolicy.objects.select_related("node")

    @extend_schema(request=s.RoutingPolicyIn, responses={200: s.RoutingPolicyOut})
    def create(self, request: Any, org_slug: str) -> Response:
        """Set the policy of a node (replaces any policy it had)."""
        data = _valid(s.RoutingPolicyIn, request.data)
        node = Node.objects.filter(organization=self.organization, pk=data["node"]).first()
        if node is None:
            raise InvalidInput({"node": [f'Invalid pk "{data["node"]}" - object does not exist.']})
        self.require(node, MANAGE_POLICIES)
        existed = RoutingPolicy.objects.filter(node=node).exists()
        code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
        return Response(_set(self, node, data["policy"]), status=code)

    @extend_schema(request=s.RoutingPolicyReplaceIn, responses={200: s.RoutingPolicyOut})
    def update(self, request: Any, org_slug: str, pk: str) -> Response:
        policy = self.get_object()
        data = _valid(s.RoutingPolicyReplaceIn, request.data)
        return Response(_set(self, policy.node, data["policy"]))

    def destroy(self, request: Any, org_slug: str, pk: str) -> Response:
        routing_policy_delete(actor=self.actor, policy=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[OpenApiParameter("node", int, required=True)],
        responses={200: s.EffectivePolicyOut},
    )
    @action(detail=False, methods=["get"])
    def effective(self, request: Any, org_slug: str) -> Response:
        """The policy that applies at a node: its ancestors' and its own, merged."""
        try:
            node_id = int(request.query_params.get("node", ""))
        except ValueError:
            raise InvalidInput({"node": ["A node id is required."]}) from None
        node = Node.objects.filter(organization=self.organization, pk=node_id).first()
        if node is None:
            raise InvalidInput({"node": [f'Invalid pk "{node_id}" - object does not exist.']})
        self.require(node, VIEW_NODE)
        table = policy_table(max_age=0)
        merged = policy_merge(
            (str(i), table.by_node.get(ancestor)) for i, ancestor in enumerate(node.ancestor_ids)
        )
        kinds = {n.pk: n.kind for n in Node.objects.filter(pk__in=node.ancestor_ids)}
        levels = [kinds[node.ancestor_ids[int(i)]] for i in merged.levels]
        return Response({"node": node.pk, "levels": levels, "policy": merged.document()})
