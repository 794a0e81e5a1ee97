"""Check the books. Exits 1 (listing what differs) unless:

- every balance equals its ledger sum and none is below zero;
- usage charges in the ledger equal the usage records they cover;
- every budget's spend in each period equals the cost of the usage records admitted against
  it, and every record in the budget's scope admitted since the budget was enforced was
  admitted against it (a budget counts all usage from the moment it applies; the moment is
  taken on the clock of the process that applied it, so gateway hosts share a clock).

A budget over its limit is listed as a warning: it is not a broken book (a limit lowered below
what was already spent, or a budget in notify mode), but a block budget over its limit that
was never lowered is an overspend worth a look.

Usage still on its way to the database (a process's write-behind, under a second) is not in
the records yet: run it on a quiet installation, or run it twice.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Sum

from billing.models import (
    BillingAccount,
    Budget,
    BudgetScope,
    BudgetUsage,
    LedgerEntry,
    UsageRecord,
)
from billing.services import account_check

ZERO = Decimal(0)
SCOPE_FIELD = {
    BudgetScope.DEPARTMENT: "department_id",
    BudgetScope.TEAM: "team_id",
    BudgetScope.PROJECT: "project_id",
    BudgetScope.MEMBER: "member_id",
    BudgetScope.KEY: "key_id",
}
RECORD_COLUMNS = (
    "organization_id",
    "cost",
    "budget_periods",
    "created_at",
    "tags",
    *SCOPE_FIELD.values(),
)


def balance_problems() -> list[str]:
    problems = [
        f"org {org}: balance {balance} != ledger sum {total}"
        for org, balance, total in account_check()
    ]
    problems += [
        f"org {org}: balance {balance} is below zero"
        for org, balance in BillingAccount.objects.filter(balance__lt=0).values_list(
            "organization_id", "balance"
        )
    ]
    charged = dict(
        LedgerEntry.objects.filter(kind="usage")
        .values("organization_id")
        .annotate(total=Sum("amount"))
        .values_list("organization_id", "total")
    )
    recorded = dict(
        UsageRecord.objects.values("organization_id")
        .annotate(total=Sum("cost"))
        .values_list("organization_id", "total")
    )
    for org in sorted(set(charged) | set(recorded)):
        if -(charged.get(org) or ZERO) != (recorded.get(org) or ZERO):
            problems.append(
                f"org {org}: usage charges {charged.get(org)} != records {recorded.get(org)}"
            )
    return problems


def _applies(budget: Budget, record: dict[str, Any]) -> bool:
    if budget.scope == BudgetScope.ORGANIZATION:
        return True
    if budget.scope == BudgetScope.TAG:  # the request carried the tag
        key, _, value = budget.tag.partition("=")
        return (record["tags"] or {}).get(key) == value
    return record[SCOPE_FIELD[budget.scope]] == budget.scope_id


def budget_problems() -> tuple[list[str], list[str]]:
    """(problems, warnings) over every budget."""
    budgets: dict[int, list[Budget]] = defaultdict(list)
    for b in Budget.objects.select_related("organization").order_by("id"):
        budgets[b.organization_id].append(b)
    known = {b.id for bs in budgets.values() for b in bs}
    counted: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    problems: list[str] = []
    missed: dict[int, int] = defaultdict(int)
    records = UsageRecord.objects.filter(organization_id__in=list(budgets)).values(*RECORD_COLUMNS)
    for record in records.iterator(chunk_size=5000):
        carried = set()
        for budget_id, start in record["budget_periods"] or ():
            if budget_id in known:
                key = (int(budget_id), _iso(start))
                counted[key] += record["cost"]
                carried.add(int(budget_id))
        for b in budgets.get(record["organization_id"], ()):
            enforced = b.enforced_at or b.created_at
            if b.id not in carried and record["created_at"] >= enforced and _applies(b, record):
                missed[b.id] += 1
    problems += [
        f"budget {budget_id}: {count} requests in its scope since it applied were not counted"
        for budget_id, count in sorted(missed.items())
    ]
    warnings: list[str] = []
    by_id = {b.id: b for bs in budgets.values() for b in bs}
    stored = {
        (u.budget_id, _iso(u.period_start)): u.spent
        for u in BudgetUsage.objects.filter(budget_id__in=known)
    }
    for key in sorted(set(stored) | set(counted)):
        spent, usage = stored.get(key, ZERO), counted.get(key, ZERO)
        budget = by_id[key[0]]
        if spent != usage:
            problems.append(
                f"budget {key[0]} period {key[1]}: spent {spent} != usage admitted against it "
                f"{usage}"
            )
        if spent > budget.limit_usd:
            warnings.append(
                f"budget {key[0]} ({budget.scope}, {budget.mode}) period {key[1]}: spent {spent} "
                f"is over its limit {budget.limit_usd}"
            )
    return problems, warnings


def _iso(start: Any) -> str:
    return start if isinstance(start, str) else start.isoformat()


class Command(BaseCommand):
    help = (
        "Verify balances (== ledger sum, >= 0), usage charges (== usage records) and every "
        "budget's spend (== the usage admitted against it, all usage in its scope since it "
        "applied)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        problems = balance_problems()
        budget_issues, warnings = budget_problems()
        problems += budget_issues
        for line in warnings:
            self.stderr.write(f"warning: {line}")
        if problems:
            raise CommandError("\n".join(problems))
        checked = Budget.objects.count()
        self.stdout.write(f"books balance ({checked} budgets checked)")
