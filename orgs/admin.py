"""Read-mostly admin pages. Changes go through the management API (services + audit log)."""

from django.contrib import admin

from orgs.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Node,
    Organization,
    ServiceToken,
)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "time_zone", "created_at", "archived_at")
    search_fields = ("slug", "name")


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("path", "kind", "slug", "name", "organization", "archived_at")
    list_filter = ("kind",)
    search_fields = ("slug", "name", "path")
    list_select_related = ("organization",)
    readonly_fields = ("path", "depth", "parent", "organization", "kind")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organization", "node", "role", "created_at", "removed_at")
    list_filter = ("role",)
    list_select_related = ("user", "organization", "node")
    readonly_fields = ("user", "organization", "node", "role", "removed_at")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "organization", "project", "created_at", "revoked_at")
    search_fields = ("name", "prefix")
    list_select_related = ("organization", "project")
    readonly_fields = ("prefix", "organization", "project", "membership", "revoked_at")


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("email", "organization", "node", "role", "expires_at", "accepted_at")
    list_select_related = ("organization", "node")
    exclude = ("token_digest",)
    readonly_fields = ("token_prefix",)


@admin.register(ServiceToken)
class ServiceTokenAdmin(admin.ModelAdmin):
    """Read only: tokens are created, re-dated and revoked through the services (audited)."""

    list_display = ("name", "prefix", "organization", "node", "expires_at", "revoked_at")
    search_fields = ("name", "prefix")
    list_select_related = ("organization", "node")
    exclude = ("digest",)

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "organization", "actor_label", "action", "target_repr")
    list_filter = ("action",)
    list_select_related = ("organization",)

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
