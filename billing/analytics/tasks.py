"""Analytics Celery tasks (scheduled in settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from billing.analytics.rollups import rollup_advance


@shared_task(name="billing.analytics_rollup")
def analytics_rollup() -> int:
    """Usage records above the watermark -> hourly and daily rollups (exactly once)."""
    return rollup_advance()
