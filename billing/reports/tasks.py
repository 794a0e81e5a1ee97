"""Report Celery tasks: build one report, and the monthly statements (beat, on the 1st)."""

from __future__ import annotations

from celery import shared_task

from billing.models import Report
from billing.reports.services import REPORT_BUILD_TASK, report_build, reports_housekeep
from billing.reports.statements import statements_build_due


@shared_task(name=REPORT_BUILD_TASK, acks_late=True)
def report_build_task(report_id: int) -> str:
    if not Report.objects.filter(pk=report_id).exists():
        return "gone"
    report = report_build(report_id=report_id)
    return "skipped" if report is None else report.status


@shared_task(name="billing.statements_monthly")
def statements_monthly() -> int:
    return len(statements_build_due())


@shared_task(name="billing.reports_housekeeping")
def reports_housekeeping() -> dict[str, int]:
    return reports_housekeep()
