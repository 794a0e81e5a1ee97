"""Analytics and report API serializers (output renders only; input validates, never saves)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from billing.models import Report, ReportKind
from billing.reports.services import report_download_url
from routing.pricing import PLACES


def amount(value: Decimal) -> str:
    return f"{Decimal(value).quantize(PLACES):.12f}"


def measures(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": row["requests"],
        "errors": row["errors"],
        "fallbacks": row["fallbacks"],
        "tokens_in": row["tokens_in"],
        "tokens_out": row["tokens_out"],
        "tokens_cached": row["tokens_cached"],
        "cost": amount(row["cost"]),
        "reference_cost": amount(row["reference_cost"]),
        "cache_lost": amount(row["cache_lost"]),
        "savings": amount(row["savings"]),
        "savings_net": amount(row["savings_net"]),
        "avg_latency_ms": row["avg_latency_ms"],
        "avg_ttft_ms": row["avg_ttft_ms"],
    }


class ReportCreateIn(serializers.Serializer):
    kind = serializers.ChoiceField(choices=[ReportKind.CSV, ReportKind.PDF])
    node = serializers.IntegerField(
        required=False, help_text="Subtree to report on (default: the organization)."
    )
    # Period and filters use the analytics query parameters (from/to or days, dimensions).
    filters = serializers.DictField(required=False, default=dict)


class ReportOut(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "kind",
            "status",
            "progress",
            "node",
            "period_start",
            "period_end",
            "filters",
            "rows",
            "pages",
            "size_bytes",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "download_url",
        ]

    def get_download_url(self, report: Report) -> str | None:
        owner = self.context.get("link_owner")
        if report.status != "done" or owner is None:
            return None
        return report_download_url(report=report, user_id=owner)
