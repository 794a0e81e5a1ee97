"""Management API shapes of single sign-on: input serializers validate shapes only (the rules
are identity.services'), output serializers render. The client secret is write-only."""

from __future__ import annotations

from rest_framework import serializers

from identity.models import GroupMapping, IdentityProvider
from orgs.api.serializers import MAX_ID
from orgs.models import Role


class IdentityProviderOut(serializers.ModelSerializer):
    domains = serializers.SerializerMethodField()
    has_client_secret = serializers.SerializerMethodField()

    class Meta:
        model = IdentityProvider
        fields = [
            "id",
            "name",
            "protocol",
            "enabled",
            "discovery_url",
            "client_id",
            "has_client_secret",
            "scopes",
            "groups_claim",
            "domains",
            "created_at",
        ]

    def get_domains(self, obj: IdentityProvider) -> list[str]:
        return sorted(d.domain for d in obj.domains.all())

    def get_has_client_secret(self, obj: IdentityProvider) -> bool:
        return bool(obj.client_secret_encrypted)


class IdentityProviderIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    discovery_url = serializers.CharField(max_length=500)
    client_id = serializers.CharField(max_length=255)
    client_secret = serializers.CharField(max_length=1000, write_only=True, required=False)
    domains = serializers.ListField(
        child=serializers.CharField(max_length=253), max_length=50, allow_empty=False
    )
    scopes = serializers.CharField(max_length=200, default="openid email profile")
    groups_claim = serializers.CharField(max_length=100, default="groups")
    enabled = serializers.BooleanField(default=True)


class GroupMappingOut(serializers.ModelSerializer):
    class Meta:
        model = GroupMapping
        fields = ["id", "identity_provider", "group", "node", "role", "created_at"]


class GroupMappingIn(serializers.Serializer):
    identity_provider = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    group = serializers.CharField(max_length=255)
    node = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    # every role, as elsewhere in the API; the service refuses owner with a field error
    role = serializers.ChoiceField(choices=Role.choices)
