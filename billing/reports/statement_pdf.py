"""A monthly statement's PDF: per organization and calendar month (in its time zone), the
balance movements from the ledger and the usage from the rollups. Scheduling and emailing are
``billing.reports.statements``."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db.models import Count, Sum
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

from billing.analytics.selectors import (
    AnalyticsQuery,
    analytics_breakdown,
    analytics_reference_models,
    analytics_source,
    analytics_totals,
    scoped_queryset,
)
from billing.models import LedgerEntry, Report
from billing.reports.pdf import STYLES, _table, exact, money


@dataclass(frozen=True)
class Movements:
    opening: Decimal
    closing: Decimal
    by_kind: dict[str, tuple[int, Decimal]]  # kind -> (entries, amount)


def month_bounds(year: int, month: int, zone: zoneinfo.ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(year, month, 1, tzinfo=zone)
    nxt = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)
    return start, nxt


def ledger_movements(*, organization_id: int, start: dt.datetime, end: dt.datetime) -> Movements:
    """Opening and closing balance (the ``balance_after`` of the last entry before each bound)
    and the period's entries summed by kind. opening + sum(amounts) == closing."""
    entries = LedgerEntry.objects.filter(organization_id=organization_id)

    def balance_before(moment: dt.datetime) -> Decimal:
        value = (
            entries.filter(created_at__lt=moment)
            .order_by("-id")
            .values_list("balance_after", flat=True)
            .first()
        )
        return value if value is not None else Decimal(0)

    rows = (
        entries.filter(created_at__gte=start, created_at__lt=end)
        .values("kind")
        .annotate(n=Count("id"), total=Sum("amount"))
        .order_by("kind")
    )
    return Movements(
        opening=balance_before(start),
        closing=balance_before(end),
        by_kind={r["kind"]: (r["n"], Decimal(r["total"] or 0)) for r in rows},
    )


def statement_pdf_write(*, report: Report, path: Path) -> int:
    """Write the statement's PDF: 1. the balance's movements from the ledger; 2. the usage and
    savings totals; 3. usage by model. Returns the number of pages."""
    org = report.organization
    zone = zoneinfo.ZoneInfo(org.time_zone)
    month = report.period_start.astimezone(zone)
    body, h1 = STYLES["BodyText"], STYLES["Title"]
    story: list[Any] = [
        Paragraph(f"Statement {month:%B %Y}", h1),
        Paragraph(f"Organization: {org.name} ({org.slug})", body),
        Paragraph(
            f"Period: {month:%Y-%m-%d} to {report.period_end.astimezone(zone):%Y-%m-%d}"
            f" ({zone.key}, end excluded)",
            body,
        ),
        Spacer(1, 6 * mm),
        *_balance_section(report),
        *_usage_sections(report),
    ]
    pages = {"n": 0}

    def page(canvas: Any, doc: Any) -> None:
        pages["n"] = doc.page

    SimpleDocTemplate(str(path), pagesize=A4, title=f"Statement {org.slug} {month:%Y-%m}").build(
        story, onFirstPage=page, onLaterPages=page
    )
    return pages["n"]


def _balance_section(report: Report) -> list[Any]:
    moves = ledger_movements(
        organization_id=report.organization_id, start=report.period_start, end=report.period_end
    )
    return [
        Paragraph("Balance", STYLES["Heading2"]),
        _table(
            ["Line", "Entries", "USD"],
            [
                ["Opening balance", "", exact(moves.opening)],
                *[
                    [kind.title(), f"{n:,}", exact(amount)]
                    for kind, (n, amount) in moves.by_kind.items()
                ],
                ["Closing balance", "", exact(moves.closing)],
            ],
            [70 * mm, 30 * mm, 60 * mm],
        ),
        Spacer(1, 6 * mm),
    ]


def _usage_sections(report: Report) -> list[Any]:
    org = report.organization
    query = AnalyticsQuery(
        start=report.period_start, end=report.period_end, time_zone=org.time_zone
    )
    qs = scoped_queryset(analytics_source(query), organization_id=org.pk, node=report.node)
    references = analytics_reference_models(qs, query)
    totals = analytics_totals(qs, query, reference_models=references)
    models = analytics_breakdown(qs, replace(query, group_by=("model",)))
    body, h2 = STYLES["BodyText"], STYLES["Heading2"]
    return [
        Paragraph("Usage", h2),
        _table(
            ["Measure", "Value"],
            [
                ["Requests", f"{totals['requests']:,}"],
                ["Tokens in / out", f"{totals['tokens_in']:,} / {totals['tokens_out']:,}"],
                ["Usage cost (USD)", exact(totals["cost"])],
                ["Reference cost (USD)", exact(totals["reference_cost"])],
                ["Savings (USD)", exact(totals["savings"])],
                ["Savings measured against", Paragraph(", ".join(references) or "-", body)],
            ],
            [70 * mm, 90 * mm],
        ),
        Spacer(1, 6 * mm),
        Paragraph("Usage by model", h2),
        _table(
            ["Model", "Requests", "Cost USD", "Savings USD"],
            [
                [
                    r["model"] or "(none)",
                    f"{r['requests']:,}",
                    money(r["cost"]),
                    money(r["savings"]),
                ]
                for r in models
            ]
            or [["(no usage)", "", "", ""]],
            [80 * mm, 25 * mm, 30 * mm, 30 * mm],
        ),
    ]
