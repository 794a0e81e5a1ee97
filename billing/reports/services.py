"""Report rows: create (enqueue), build (claim, write the file, record progress), sign links."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.core import signing
from django.db import transaction
from django.utils import timezone

from billing.errors import InvalidInput
from billing.models import Report, ReportKind, ReportStatus
from billing.reports.csv_export import usage_csv_write
from billing.reports.pdf import report_pdf_write
from billing.reports.progress import report_path
from billing.reports.statement_pdf import statement_pdf_write
from orgs.audit import Actor, audit_event_record
from orgs.models import Node, Organization

log = logging.getLogger(__name__)
REPORT_BUILD_TASK = "billing.report_build"
SALT = "billing.report.download"


def report_create(
    *,
    actor: Actor,
    organization: Organization,
    node: Node,
    kind: str,
    start: dt.datetime,
    end: dt.datetime,
    filters: Mapping[str, list[Any]] | None = None,
) -> Report:
    """A pending report of ``node``'s subtree for [start, end); built by Celery after commit.
    The caller has checked that ``actor`` may see billing on ``node``."""
    if kind not in (ReportKind.CSV, ReportKind.PDF):
        raise InvalidInput({"kind": "csv or pdf."})
    if node.organization_id != organization.pk:
        raise InvalidInput({"node": "Not a node of this organization."})
    with transaction.atomic():
        report = Report.objects.create(
            organization=organization,
            node=node,
            kind=kind,
            period_start=start,
            period_end=end,
            filters=dict(filters or {}),
            requested_by_id=actor.user.pk if actor.user is not None else None,
        )
        audit_event_record(
            organization=organization,
            actor=actor,
            action="report.create",
            target=report,
            changes={
                "kind": kind,
                "node": node.pk,
                "from": start.isoformat(),
                "to": end.isoformat(),
            },
        )
        # The build task by its name (billing.reports.tasks imports this module).
        transaction.on_commit(lambda: current_app.tasks[REPORT_BUILD_TASK].delay(report.pk))
    return report


def report_build(*, report_id: int) -> Report | None:
    """Claim a pending report (one worker wins), write its file, record the outcome. A gone or
    already claimed report is left alone (idempotent)."""
    claimed = Report.objects.filter(pk=report_id, status=ReportStatus.PENDING).update(
        status=ReportStatus.RUNNING, started_at=timezone.now(), progress=0
    )
    if not claimed:
        return None
    report = Report.objects.select_related("organization", "node").get(pk=report_id)
    ext = "csv" if report.kind == ReportKind.CSV else "pdf"
    name = f"{report.pk}-{report.kind}-{secrets.token_hex(8)}.{ext}"
    directory = Path(settings.REPORTS_DIR) / str(report.organization_id)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    partial = directory / f".{name}.part"
    try:
        if report.kind == ReportKind.CSV:
            rows = usage_csv_write(report=report, path=partial)
            pages = 0
        elif report.kind == ReportKind.STATEMENT:
            pages = statement_pdf_write(report=report, path=partial)
            rows = 0
        else:
            pages = report_pdf_write(report=report, path=partial)
            rows = 0
        partial.replace(final)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        log.exception("report %s failed", report_id)
        Report.objects.filter(pk=report_id).update(
            status=ReportStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:500],
            finished_at=timezone.now(),
        )
        raise
    Report.objects.filter(pk=report_id).update(
        status=ReportStatus.DONE,
        progress=100,
        file_name=name,
        size_bytes=final.stat().st_size,
        rows=rows,
        pages=pages,
        finished_at=timezone.now(),
    )
    report.refresh_from_db()
    return report


def report_download_token(*, report: Report, user_id: int) -> str:
    """A link token for one user and one report, valid for ``REPORT_LINK_MAX_AGE`` seconds."""
    return signing.TimestampSigner(salt=SALT).sign(f"{report.pk}:{user_id}")


def report_token_valid(*, report: Report, user_id: int, token: str) -> bool:
    try:
        value = signing.TimestampSigner(salt=SALT).unsign(
            token, max_age=settings.REPORT_LINK_MAX_AGE
        )
    except signing.BadSignature:  # includes SignatureExpired
        return False
    return secrets.compare_digest(value, f"{report.pk}:{user_id}")


def report_download_url(*, report: Report, user_id: int, absolute: bool = False) -> str:
    path = (
        f"/api/orgs/{report.organization.slug}/reports/{report.pk}/download/"
        f"?token={report_download_token(report=report, user_id=user_id)}"
    )
    return f"{settings.MEGAROUTER_PUBLIC_URL}{path}" if absolute else path


def reports_housekeep(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Hourly (beat): a report left ``running`` past ``REPORT_STUCK_AFTER`` seconds (its worker
    died; the claim stops a redelivery from rebuilding it) is marked failed; CSV and PDF reports
    finished more than ``REPORT_RETENTION_DAYS`` days ago are deleted with their files.
    Statements are financial records and are kept."""
    now = now or timezone.now()
    stuck = Report.objects.filter(
        status=ReportStatus.RUNNING,
        started_at__lt=now - dt.timedelta(seconds=settings.REPORT_STUCK_AFTER),
    ).update(status=ReportStatus.FAILED, error="The worker building it stopped.", finished_at=now)
    old = Report.objects.filter(
        kind__in=(ReportKind.CSV, ReportKind.PDF),
        finished_at__lt=now - dt.timedelta(days=settings.REPORT_RETENTION_DAYS),
    ).exclude(status__in=(ReportStatus.PENDING, ReportStatus.RUNNING))
    deleted = 0
    for report in old.only("id", "organization_id", "file_name").iterator():
        if report.file_name:
            report_path(report).unlink(missing_ok=True)
        deleted += Report.objects.filter(pk=report.pk).delete()[0]
    return {"stuck": stuck, "deleted": deleted}
