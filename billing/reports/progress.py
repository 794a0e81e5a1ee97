"""Where a report's file lives and how far its build has come (the writers report progress)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from billing.models import Report, ReportStatus


def report_path(report: Report) -> Path:
    return Path(settings.REPORTS_DIR) / str(report.organization_id) / report.file_name


def report_progress(report_id: int, progress: int) -> None:
    Report.objects.filter(pk=report_id, status=ReportStatus.RUNNING).update(
        progress=max(0, min(99, progress))
    )
