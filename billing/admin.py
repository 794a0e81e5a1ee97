"""Admin views: read-only for money (the ledger changes only through services)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from billing.models import (
    BillingAccount,
    Budget,
    LedgerEntry,
    Notification,
    PaymentEvent,
    UsageRecord,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(BillingAccount)
class BillingAccountAdmin(ReadOnlyAdmin):
    list_display = ("organization", "balance", "held", "currency", "updated_at")
    search_fields = ("organization__slug",)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "organization",
        "kind",
        "amount",
        "balance_after",
        "reference",
        "created_at",
    )
    list_filter = ("kind",)
    search_fields = ("organization__slug", "reference")


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "request_id",
        "organization",
        "model",
        "tokens_in",
        "tokens_out",
        "cost",
        "created_at",
    )
    search_fields = ("request_id", "organization__slug", "model")


@admin.register(PaymentEvent)
class PaymentEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "type", "organization", "amount", "status", "received_at")


@admin.register(Budget)
class BudgetAdmin(ReadOnlyAdmin):
    """Budgets change through the management API (audited, validated)."""

    list_display = ("id", "organization", "scope", "scope_id", "period", "limit_usd", "mode")
    list_filter = ("scope", "period", "mode")


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ("id", "organization", "kind", "title", "created_at")
