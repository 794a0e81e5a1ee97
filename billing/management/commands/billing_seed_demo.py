"""Give the demo organization (``manage.py seed_demo``) prepaid credit and a monthly budget, so
the demo gateway admits requests. Idempotent; does nothing when there is no demo organization.

    manage.py billing_seed_demo [--org demo] [--credit 100.00] [--budget 50.00]
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from billing import services
from billing.models import Budget, LedgerEntry
from orgs.audit import Actor
from orgs.models import Organization

DEMO_REFERENCE = "demo credit"


class Command(BaseCommand):
    help = "Prepaid credit and a monthly budget for the demo organization (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--org", default="demo")
        parser.add_argument("--credit", default="100.00")
        parser.add_argument("--budget", default="50.00")

    def handle(self, *args: Any, **opts: Any) -> None:
        org = Organization.objects.filter(slug=opts["org"]).first()
        if org is None:
            self.stdout.write(f"no organization {opts['org']!r}: nothing to do")
            return
        actor = Actor.system()
        if not LedgerEntry.objects.filter(organization=org, reference=DEMO_REFERENCE).exists():
            services.transfer_record(
                actor=actor, organization=org, amount=opts["credit"], reference=DEMO_REFERENCE
            )
        if not Budget.objects.filter(organization=org, scope="organization").exists():
            services.budget_create(
                actor=actor,
                organization=org,
                scope="organization",
                period="monthly",
                limit_usd=opts["budget"],
                name="Demo monthly budget",
            )
        self.stdout.write(f"{org.slug}: credit and budget in place")
