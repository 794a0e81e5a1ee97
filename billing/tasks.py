"""Celery tasks (scheduled in settings.CELERY_BEAT_SCHEDULE). Each is idempotent."""

from __future__ import annotations

from celery import shared_task

from billing import services
from billing.alerts import budget_alerts_evaluate


@shared_task(name="billing.usage_events_process")
def usage_events_process(batch: int = 2000, max_batches: int = 50) -> int:
    """Usage events -> usage records + ledger charges + budget spend, then threshold alerts
    for the budgets that moved."""
    total = 0
    budget_ids: set[int] = set()
    for _ in range(max_batches):
        result = services.usage_events_post(limit=batch)
        total += result.events
        budget_ids |= result.budget_ids
        if result.events < batch:
            break
    if budget_ids:
        budget_alerts_evaluate(budget_ids=budget_ids)
    return total


@shared_task(name="billing.reservations_reconcile")
def reservations_reconcile() -> dict[str, int]:
    return services.reservations_reconcile()


@shared_task(name="billing.budget_alerts_check")
def budget_alerts_check() -> int:
    return len(budget_alerts_evaluate())


@shared_task(name="billing.budget_periods_roll")
def budget_periods_roll() -> int:
    return services.budget_periods_roll()


# Analytics and reports register their tasks (billing.analytics_rollup, billing.report_build,
# billing.statements_monthly) through these imports.
from billing.analytics import tasks as _analytics_tasks  # noqa: E402,F401
from billing.reports import tasks as _report_tasks  # noqa: E402,F401
