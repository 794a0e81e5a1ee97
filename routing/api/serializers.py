"""Routing policy API shapes. Input is validated by ``routing.policies.policy_spec_from_dict``
(the same rules as the operator file); these serializers only render and take the node."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from routing.policies import _spec_from_row, policy_spec_to_dict
from routing.policy_models import RoutingPolicy


class RoutingPolicyOut(serializers.ModelSerializer):
    node_kind = serializers.CharField(source="node.kind", read_only=True)
    node_slug = serializers.CharField(source="node.slug", read_only=True)
    policy = serializers.SerializerMethodField()

    class Meta:
        model = RoutingPolicy
        fields = ["id", "node", "node_kind", "node_slug", "policy", "created_at", "updated_at"]

    def get_policy(self, obj: RoutingPolicy) -> dict[str, Any]:
        return policy_spec_to_dict(_spec_from_row(obj))


class RoutingPolicyIn(serializers.Serializer):
    node = serializers.IntegerField(min_value=1)
    policy = serializers.DictField()


class RoutingPolicyReplaceIn(serializers.Serializer):
    policy = serializers.DictField()


class EffectivePolicyOut(serializers.Serializer):
    node = serializers.IntegerField()
    levels = serializers.ListField(child=serializers.CharField())
    policy = serializers.DictField()
