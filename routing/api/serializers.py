"""Routing policy API shapes. The document is validated by ``orgs.policy.PolicySpec`` (the one
declaration every level uses); these serializers only render and take the node."""

from __future__ import annotations

from rest_framework import serializers

from routing.policy_models import RoutingPolicy


class RoutingPolicyOut(serializers.ModelSerializer):
    node_kind = serializers.CharField(source="node.kind", read_only=True)
    node_slug = serializers.CharField(source="node.slug", read_only=True)
    policy = serializers.JSONField(source="document", read_only=True)

    class Meta:
        model = RoutingPolicy
        fields = ["id", "node", "node_kind", "node_slug", "policy", "created_at", "updated_at"]


class RoutingPolicyIn(serializers.Serializer):
    node = serializers.IntegerField(min_value=1)
    policy = serializers.DictField()


class RoutingPolicyReplaceIn(serializers.Serializer):
    policy = serializers.DictField()


class EffectivePolicyOut(serializers.Serializer):
    node = serializers.IntegerField()
    levels = serializers.ListField(child=serializers.CharField())
    policy = serializers.DictField()
