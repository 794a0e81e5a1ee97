"""Input serializers validate shapes (services validate rules); output serializers render."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from orgs.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Node,
    Organization,
    PersonalAccessToken,
    Role,
    ServiceToken,
)
from orgs.roles import SCOPES
from orgs.selectors import invitation_state, service_token_state

# --- output -------------------------------------------------------------------------------

# Ids and limits fit a signed 64-bit column: a larger number is a 400, not a database error.
MAX_ID = 2**63 - 1
MAX_LIMIT = 2**31 - 1  # per-minute limits are 32-bit columns


class OrganizationOut(serializers.ModelSerializer):
    root_node = serializers.IntegerField(source="root_node_id", read_only=True)

    class Meta:
        model = Organization
        fields = ["id", "name", "slug", "time_zone", "created_at", "root_node"]


class NodeOut(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = [
            "id",
            "kind",
            "parent",
            "name",
            "slug",
            "path",
            "depth",
            "created_at",
            "archived_at",
        ]


class UserOut(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField()  # may be empty (users created without one)


class MemberOut(serializers.ModelSerializer):
    user = UserOut(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "node", "role", "created_at", "removed_at"]


class InvitationOut(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    invited_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Invitation
        fields = [
            "id",
            "email",
            "node",
            "role",
            "status",
            "invited_by",
            "created_at",
            "expires_at",
            "accepted_at",
            "revoked_at",
        ]

    def get_status(self, obj: Invitation) -> str:
        return invitation_state(obj)


class InvitationCreatedOut(InvitationOut):
    token = serializers.CharField(read_only=True)

    class Meta(InvitationOut.Meta):
        fields = [*InvitationOut.Meta.fields, "token"]


class ApiKeyOut(serializers.ModelSerializer):
    user = serializers.IntegerField(source="membership.user_id", read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "project",
            "membership",
            "user",
            "allowed_models",
            "ip_allowlist",
            "rpm_limit",
            "tpm_limit",
            "routing_policy",
            "expires_at",
            "created_at",
            "revoked_at",
            "revoked_reason",
        ]


class ApiKeyCreatedOut(ApiKeyOut):
    key = serializers.CharField(read_only=True, help_text="The secret, shown only this once.")

    class Meta(ApiKeyOut.Meta):
        fields = [*ApiKeyOut.Meta.fields, "key"]


class AuditEventOut(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "actor_label",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "changes",
            "ip",
            "request_id",
        ]


class AccessTokenOut(serializers.ModelSerializer):
    class Meta:
        model = PersonalAccessToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]


class AccessTokenCreatedOut(AccessTokenOut):
    token = serializers.CharField(read_only=True, help_text="The secret, shown only this once.")

    class Meta(AccessTokenOut.Meta):
        fields = [*AccessTokenOut.Meta.fields, "token"]


class ServiceTokenOut(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField()
    scopes = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = ServiceToken
        fields = [
            "id",
            "name",
            "prefix",
            "node",
            "scopes",
            "state",
            "created_by",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ]

    def get_created_by(self, obj: ServiceToken) -> str | None:
        return obj.created_by.get_username() if obj.created_by else None

    def get_state(self, obj: ServiceToken) -> str:
        """``active``, ``revoked``, ``expired`` or ``archived``."""
        return service_token_state(obj)


class ServiceTokenCreatedOut(ServiceTokenOut):
    token = serializers.CharField(read_only=True, help_text="The secret, shown only this once.")

    class Meta(ServiceTokenOut.Meta):
        fields = [*ServiceTokenOut.Meta.fields, "token"]


# --- input --------------------------------------------------------------------------------


class OrganizationCreateIn(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=80)
    time_zone = serializers.CharField(max_length=64, default="UTC")


class OrganizationUpdateIn(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    time_zone = serializers.CharField(max_length=64, required=False)


class NodeCreateIn(serializers.Serializer):
    parent = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=80)


class NodeUpdateIn(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    slug = serializers.SlugField(max_length=80, required=False)


class NodeMoveIn(serializers.Serializer):
    parent = serializers.IntegerField(min_value=1, max_value=MAX_ID)


class NodeArchiveIn(serializers.Serializer):
    revoke_keys = serializers.BooleanField(default=False)


class MemberCreateIn(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    node = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    role = serializers.ChoiceField(choices=Role.choices)


class MemberUpdateIn(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationCreateIn(serializers.Serializer):
    email = serializers.EmailField()
    node = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    role = serializers.ChoiceField(choices=Role.choices)
    ttl_hours = serializers.IntegerField(min_value=1, max_value=720, default=168)


class InvitationAcceptIn(serializers.Serializer):
    token = serializers.CharField(max_length=200)


class _KeyFields(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), max_length=200, required=False
    )
    ip_allowlist = serializers.ListField(
        child=serializers.CharField(max_length=64), max_length=100, required=False
    )
    rpm_limit = serializers.IntegerField(
        min_value=1, max_value=MAX_LIMIT, allow_null=True, required=False
    )
    tpm_limit = serializers.IntegerField(
        min_value=1, max_value=MAX_LIMIT, allow_null=True, required=False
    )
    routing_policy = serializers.JSONField(allow_null=True, required=False)
    expires_at = serializers.DateTimeField(allow_null=True, required=False)


class ApiKeyCreateIn(_KeyFields):
    project = serializers.IntegerField(min_value=1, max_value=MAX_ID)


class ApiKeyUpdateIn(_KeyFields):
    name = serializers.CharField(max_length=200, required=False)


class ApiKeyRotateIn(serializers.Serializer):
    grace_seconds = serializers.IntegerField(min_value=0, max_value=2_592_000, default=0)


class ServiceTokenCreateIn(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    node = serializers.IntegerField(
        min_value=1,
        max_value=MAX_ID,
        required=False,
        help_text="Limit the token to this node's subtree (default: the whole organization).",
    )
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=SCOPES), allow_empty=False, max_length=len(SCOPES)
    )
    expires_at = serializers.DateTimeField(allow_null=True, required=False)


class ServiceTokenUpdateIn(serializers.Serializer):
    expires_at = serializers.DateTimeField(allow_null=True)


class AccessTokenCreateIn(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    expires_at = serializers.DateTimeField(allow_null=True, required=False)


def created_key_payload(api_key: ApiKey, raw: str) -> dict[str, Any]:
    data = dict(ApiKeyOut(api_key).data)
    data["key"] = raw
    return data
