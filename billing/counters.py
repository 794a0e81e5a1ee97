"""Hooks services call after commit so the admission counters follow balance and budget
changes (the Redis backend keeps its own copy; the database backend reads the rows)."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.utils import timezone

from billing.admission import get_backend
from billing.models import Budget

logger = logging.getLogger("megarouter.billing")


def balance_changed(organization_id: int, delta: Decimal) -> None:
    backend = get_backend()
    if hasattr(backend, "balance_changed"):
        backend.balance_changed(organization_id, delta)


def budgets_changed(organization_id: int) -> None:
    """Push the organization's budget definitions to the counters' store. A failure is logged,
    not raised (the change is committed): reconciliation pushes definitions whose version the
    store lacks, and until then a store that cannot be reached admits nothing."""
    backend = get_backend()
    if not hasattr(backend, "budgets_changed"):
        # The database backend reads the budgets in each admission's transaction: a
        # committed budget applies to every admission from now.
        Budget.objects.filter(organization_id=organization_id, enforced_at__isnull=True).update(
            enforced_at=timezone.now()
        )
        return
    try:
        backend.budgets_changed(organization_id)
    except Exception as exc:
        logger.error(
            "budget definitions not pushed",
            extra={"fields": {"organization_id": organization_id, "error": type(exc).__name__}},
        )
