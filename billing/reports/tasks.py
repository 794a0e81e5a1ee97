"""Report Celery tasks: build one report, and the monthly statements (beat, on the 1st)."""

from __future__ import annotations

from celery import shared_task

from billing.analytics.models import Report


@shared_task(name="billing.report_build", acks_late=True)
def report_build_task(report_id: int) -> str:
    from billing.reports.services import report_build

    if not Report.objects.filter(pk=report_id).exists():
        return "gone"
    report = report_build(report_id=report_id)
    return "skipped" if report is None else report.status


@shared_task(name="billing.statements_monthly")
def statements_monthly() -> int:
    from billing.reports.statements import statements_build_due

    return len(statements_build_due())


@shared_task(name="billing.reports_housekeeping")
def reports_housekeeping() -> dict[str, int]:
    from billing.reports.services import reports_housekeep

    return reports_housekeep()
