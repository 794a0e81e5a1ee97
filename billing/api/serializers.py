"""Input serializers check shapes (services check rules and amounts); output ones render.
Amounts travel as decimal strings; floats are refused by the services."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from billing.models import Budget, Checkout, LedgerEntry, Notification, UsageRecord
from billing.services import checkout_pay_url

# --- input ----------------------------------------------------------------------------------

# Ids and limits fit a signed 64-bit column: a larger number is a 400, not a database error.
MAX_ID = 2**63 - 1


class CheckoutIn(serializers.Serializer):
    amount = serializers.JSONField(help_text='USD as a decimal string, e.g. "100.00".')


class CheckoutOut(serializers.ModelSerializer):
    id = serializers.IntegerField(read_only=True)
    checkout = serializers.CharField(source="public_id", read_only=True)
    amount = serializers.DecimalField(max_digits=24, decimal_places=12, read_only=True)
    pay_url = serializers.SerializerMethodField()

    class Meta:
        model = Checkout
        fields = ["id", "checkout", "amount", "status", "created_at", "paid_at", "pay_url"]

    def get_pay_url(self, obj: Checkout) -> str:
        return checkout_pay_url(obj) if obj.status == "open" else ""


class BudgetCreateIn(serializers.Serializer):
    scope = serializers.CharField()
    scope_id = serializers.IntegerField(
        min_value=1, max_value=MAX_ID, required=False, allow_null=True
    )
    period = serializers.CharField()
    limit_usd = serializers.JSONField()
    mode = serializers.CharField(required=False, default="block")
    thresholds = serializers.JSONField(required=False)
    name = serializers.CharField(required=False, allow_blank=True, default="")
    notify_emails = serializers.JSONField(required=False)
    webhook_url = serializers.CharField(required=False, allow_blank=True, default="")
    tag = serializers.CharField(
        required=False, allow_blank=True, default="", help_text='scope "tag": "key=value"'
    )


class BudgetUpdateIn(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True)
    limit_usd = serializers.JSONField(required=False)
    mode = serializers.CharField(required=False)
    thresholds = serializers.JSONField(required=False)
    notify_emails = serializers.JSONField(required=False)
    webhook_url = serializers.CharField(required=False, allow_blank=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: ["This field cannot be changed."] for name in unknown}
            )
        return attrs


# --- output ---------------------------------------------------------------------------------


class BalanceOut(serializers.Serializer):
    organization = serializers.CharField()
    currency = serializers.CharField()
    balance = serializers.DecimalField(max_digits=24, decimal_places=12)
    pending = serializers.DecimalField(
        max_digits=24, decimal_places=12, help_text="Open holds and usage not yet posted."
    )
    available = serializers.DecimalField(max_digits=24, decimal_places=12)


class LedgerEntryOut(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = LedgerEntry
        fields = [
            "id",
            "kind",
            "amount",
            "balance_after",
            "reference",
            "reason",
            "created_by",
            "created_at",
        ]

    def get_created_by(self, obj: LedgerEntry) -> str | None:
        return obj.created_by.get_username() if obj.created_by else None


class BudgetOut(serializers.ModelSerializer):
    spent = serializers.SerializerMethodField()
    period_start = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = [
            "id",
            "name",
            "scope",
            "scope_id",
            "tag",
            "node",
            "period",
            "limit_usd",
            "mode",
            "thresholds",
            "notify_emails",
            "webhook_url",
            "period_start",
            "spent",
            "created_at",
            "updated_at",
        ]

    def _current(self, obj: Budget) -> Any:
        return self.context.get("current", {}).get(obj.pk, (None, None))

    def get_spent(self, obj: Budget) -> str | None:
        spent = self._current(obj)[1]
        return None if spent is None else str(spent)

    def get_period_start(self, obj: Budget) -> str | None:
        start = self._current(obj)[0]
        return None if start is None else start.isoformat()


class NotificationOut(serializers.ModelSerializer):
    class Meta:
        model = Notification
        fields = ["id", "kind", "budget", "title", "body", "data", "created_at", "read_at"]


class UsageRecordOut(serializers.ModelSerializer):
    class Meta:
        model = UsageRecord
        exclude = ["organization", "ledger_entry", "recorded_at"]
