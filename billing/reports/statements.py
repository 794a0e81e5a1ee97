"""Monthly statements: built by ``billing.statements_monthly`` (beat, hourly on the 1st and
2nd of each month, UTC, so every time zone has finished its month), once per organization and
month (a unique constraint on the report row), and emailed to the organization's owners and
billing managers with a signed link each. The PDF is ``billing.reports.statement_pdf``."""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import Report, ReportKind, ReportStatus
from billing.reports.services import report_build, report_download_url
from billing.reports.statement_pdf import month_bounds
from orgs.models import Membership, Organization, Role
from orgs.selectors import root_node

log = logging.getLogger(__name__)
RECIPIENT_ROLES = (Role.OWNER, Role.BILLING_MANAGER)


def statement_recipients(organization: Organization) -> list[Membership]:
    root = root_node(organization)
    return list(
        Membership.objects.filter(
            organization=organization, node=root, role__in=RECIPIENT_ROLES, removed_at__isnull=True
        )
        .exclude(user__email="")
        .select_related("user")
        .order_by("id")
    )


def statement_build(*, organization: Organization, year: int, month: int) -> Report | None:
    """Build and email one organization's statement for a month; None when it already exists."""
    zone = zoneinfo.ZoneInfo(organization.time_zone)
    start, end = month_bounds(year, month, zone)
    try:
        with transaction.atomic():
            report = Report.objects.create(
                organization=organization,
                node=root_node(organization),
                kind=ReportKind.STATEMENT,
                period_start=start,
                period_end=end,
            )
    except IntegrityError:
        return None
    built = report_build(report_id=report.pk)
    if built is None or built.status != ReportStatus.DONE:
        return built
    for membership in statement_recipients(organization):
        link = report_download_url(report=built, user_id=membership.user_id, absolute=True)
        send_mail(
            subject=f"MegaRouter statement {start:%B %Y}: {organization.name}",
            message=(
                f"Your MegaRouter statement for {start:%B %Y} ({organization.name}) is ready.\n\n"
                f"Download (signed link, sign in required): {link}\n"
            ),
            from_email=None,
            recipient_list=[membership.user.email],
        )
    return built


def statements_build_due(*, now: dt.datetime | None = None) -> list[Report]:
    """Statements for the last complete month of every live organization that lacks one."""
    now = now or timezone.now()
    built = []
    for org in Organization.objects.filter(archived_at__isnull=True).order_by("id"):
        local = now.astimezone(zoneinfo.ZoneInfo(org.time_zone))
        year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
        start, _ = month_bounds(year, month, zoneinfo.ZoneInfo(org.time_zone))
        if (
            org.created_at
            >= month_bounds(local.year, local.month, zoneinfo.ZoneInfo(org.time_zone))[0]
        ):
            continue  # created this month: nothing to state yet
        if Report.objects.filter(
            organization=org, kind=ReportKind.STATEMENT, period_start=start
        ).exists():
            continue
        try:
            report = statement_build(organization=org, year=year, month=month)
        except Exception:
            log.exception("statement for organization %s failed", org.pk)
            continue
        if report is not None:
            built.append(report)
    return built
