"""Hooks services call after commit so the admission counters follow balance and budget
changes (the Redis backend keeps its own copy; the database backend reads the rows)."""

from __future__ import annotations

from decimal import Decimal

from billing.admission import get_backend


def balance_changed(organization_id: int, delta: Decimal) -> None:
    backend = get_backend()
    if hasattr(backend, "balance_changed"):
        backend.balance_changed(organization_id, delta)


def budgets_changed(organization_id: int) -> None:
    backend = get_backend()
    if hasattr(backend, "budgets_changed"):
        backend.budgets_changed(organization_id)
