"""Billing reads for the API and the console."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet, Sum
from django.utils import timezone

from billing.models import (
    BillingAccount,
    Budget,
    BudgetUsage,
    LedgerEntry,
    Reservation,
    UsageEvent,
    UsageRecord,
)
from billing.periods import period_start
from orgs.models import Organization


def balance_summary(*, organization: Organization) -> dict[str, Any]:
    """Balance (= ledger sum), what is pending (open holds + usage not yet posted) and what is
    available for new requests."""
    balance = (
        BillingAccount.objects.filter(organization=organization)
        .values_list("balance", flat=True)
        .first()
    ) or Decimal(0)
    events = UsageEvent.objects.filter(organization_id=organization.pk).aggregate(s=Sum("cost"))
    holds = Reservation.objects.filter(organization_id=organization.pk).aggregate(s=Sum("amount"))
    pending = (events["s"] or Decimal(0)) + (holds["s"] or Decimal(0))
    return {
        "organization": organization.slug,
        "currency": "USD",
        "balance": balance,
        "pending": pending,
        "available": balance - pending,
    }


def ledger_entries() -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.select_related("created_by")


def budgets() -> QuerySet[Budget]:
    return Budget.objects.select_related("organization")


def budgets_current_spend(
    budgets_list: list[Budget], *, now: dt.datetime | None = None
) -> dict[int, tuple[dt.datetime, Decimal]]:
    """{budget id: (current period start, posted spend)} in one query."""
    now = now or timezone.now()
    starts = {b.pk: period_start(b.period, now, b.organization.time_zone) for b in budgets_list}
    if not starts:
        return {}
    rows = BudgetUsage.objects.filter(
        budget_id__in=list(starts), period_start__in=set(starts.values())
    ).values_list("budget_id", "period_start", "spent")
    spent = {(b, s): v for b, s, v in rows}
    return {pk: (start, spent.get((pk, start), Decimal(0))) for pk, start in starts.items()}


def usage_records() -> QuerySet[UsageRecord]:
    return UsageRecord.objects.all()


# ---------------------------------------------------------------- list filters
# One declaration per list (orgs.filters), for the management API and the console.

LEDGER_FILTERS = {
    "kind": ("kind", str),
    "since": ("created_at__gte", "datetime"),
    "until": ("created_at__lt", "datetime"),
}
BUDGET_FILTERS = {
    "scope": ("scope", str),
    "scope_id": ("scope_id", int),
    "period": ("period", str),
    "mode": ("mode", str),
}
NOTIFICATION_FILTERS = {"kind": ("kind", str), "budget": ("budget_id", int)}
