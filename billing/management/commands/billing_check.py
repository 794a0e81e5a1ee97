"""Check the books: every balance equals its ledger sum, and usage charges equal the usage
records they cover. Exits 1 (listing the organizations) when something differs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Sum

from billing.models import LedgerEntry, UsageRecord
from billing.services import account_check


class Command(BaseCommand):
    help = "Verify balance == ledger sum and usage ledger == usage records."

    def handle(self, *args: Any, **options: Any) -> None:
        problems = [
            f"org {org}: balance {balance} != ledger sum {total}"
            for org, balance, total in account_check()
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
            if -(charged.get(org) or Decimal(0)) != (recorded.get(org) or Decimal(0)):
                problems.append(
                    f"org {org}: usage charges {charged.get(org)} != records {recorded.get(org)}"
                )
        if problems:
            raise CommandError("\n".join(problems))
        self.stdout.write("books balance")
