"""PDF spend report (reportlab + a matplotlib chart rendered server-side with the Agg backend).

Sections: cover (organization, scope, period), totals, savings against the reference models
(each request on its routing policy's reference model; one line per reference model), daily
spend chart, breakdowns by department / team / project / model / provider, top keys,
budget status. Every figure comes from the analytics selectors over the rollups, so it equals
the API (and the CSV) for the same period and scope.
"""

from __future__ import annotations

import io
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from django.utils import timezone
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    Flowable,
    Image,
    LongTable,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
)

from billing.analytics.reference import reference_model
from billing.analytics.selectors import (
    AnalyticsQuery,
    analytics_breakdown,
    analytics_source,
    analytics_timeseries,
    analytics_totals,
    dimension_labels,
    node_scope_column,
    scoped_queryset,
)
from billing.models import Budget, Report
from billing.money import usd_text
from billing.reports.progress import report_progress
from billing.selectors import budgets_current_spend

STYLES = getSampleStyleSheet()
TOP_KEYS = 25
BREAKDOWNS = (
    ("department", "Spend by department"),
    ("team", "Spend by team"),
    ("project", "Spend by project"),
    ("model", "Spend by model"),
    ("provider", "Spend by provider"),
)


def money(amount: Decimal) -> str:
    """An amount in a table: the console's formatter (``billing.money.usd_text``)."""
    return usd_text(amount)


def exact(amount: Decimal) -> str:
    """Totals are printed exactly as stored (12 places)."""
    return f"{amount:.12f}"


def _query(report: Report, **kw: Any) -> AnalyticsQuery:
    return AnalyticsQuery(
        start=report.period_start,
        end=report.period_end,
        filters={k: tuple(v) for k, v in (report.filters or {}).items()},
        time_zone=report.organization.time_zone,
        **kw,
    )


def run(report: Report, query: AnalyticsQuery, fn: Any, **kw: Any) -> Any:
    source = analytics_source(query, scope_column=node_scope_column(report.node))
    qs = scoped_queryset(source, organization_id=report.organization_id, node=report.node)
    return fn(qs, query, **kw)


def _table(header: list[str], rows: list[list[Any]], widths: list[float]) -> LongTable:
    table = LongTable([header, *rows], colWidths=widths, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
                ("FONT", (0, 1), (-1, -1), "Helvetica", 8),
                ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f2f4f7")]),
            ]
        )
    )
    return table


def _chart(
    series: list[dict[str, Any]], zone: zoneinfo.ZoneInfo, reference_label: str
) -> io.BytesIO:
    days = [r["t"].astimezone(zone).date() for r in series]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=110)
    ax.plot(days, [float(r["cost"]) for r in series], label="Actual spend", color="#1f5fbf")
    ax.plot(
        days,
        [float(r["reference_cost"]) for r in series],
        label=reference_label,
        color="#c0392b",
        linestyle="--",
    )
    ax.set_ylabel("USD per day")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return buffer


def _period_label(report: Report, zone: zoneinfo.ZoneInfo) -> str:
    start = report.period_start.astimezone(zone)
    end = report.period_end.astimezone(zone)
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({zone.key}, end excluded)"


def report_pdf_write(*, report: Report, path: Path) -> int:
    """Write the spend report to ``path``; returns the number of pages.

    Steps, in page order: the cover (``_cover``); totals and savings against the reference
    models (``_summary``); the daily spend chart (``_daily_spend``); one page per breakdown
    (``_breakdowns``); the top keys and the budget status (``_keys_and_budgets``); then the
    document is laid out with its page footer (``_build``). Progress is reported after the
    summary, the chart and each breakdown.
    """
    zone = zoneinfo.ZoneInfo(report.organization.time_zone)
    story = _cover(report, zone)
    summary, reference_label = _summary(report)
    story += summary
    report_progress(report.pk, 10)
    story += _daily_spend(report, zone, reference_label)
    report_progress(report.pk, 20)
    story += _breakdowns(report)
    story += _keys_and_budgets(report)
    return _build(report, path, story)


def _cover(report: Report, zone: zoneinfo.ZoneInfo) -> list[Flowable]:
    """The cover page: organization, scope, period, filters and generation time."""
    body = STYLES["BodyText"]
    scope = (
        "whole organization"
        if report.node.parent_id is None
        else f"{report.node.kind} {report.node.name}"
    )
    return [
        Spacer(1, 40 * mm),
        Paragraph("MegaRouter spend report", STYLES["Title"]),
        Paragraph(f"Organization: {report.organization.name} ({report.organization.slug})", body),
        Paragraph(f"Scope: {scope}", body),
        Paragraph(f"Period: {_period_label(report, zone)}", body),
        Paragraph(f"Filters: {report.filters or 'none'}", body),
        Paragraph(f"Generated: {timezone.now().astimezone(zone):%Y-%m-%d %H:%M %Z}", body),
        PageBreak(),
    ]


def _summary(report: Report) -> tuple[list[Flowable], str]:
    """Totals and savings (overall and per reference model); also the chart's reference
    line label."""
    totals = run(report, _query(report), analytics_totals)
    by_reference = run(
        report, _query(report, group_by=("reference_model",)), analytics_breakdown, limit=1000
    )
    by_reference.sort(key=lambda r: r["reference_model"])
    reference_label, measured = _reference_wording(by_reference)
    return [
        *_totals_section(totals),
        *_savings_section(totals, by_reference, measured),
    ], reference_label


def _reference_wording(by_reference: list[dict[str, Any]]) -> tuple[str, str]:
    """The chart label and the savings sentence's wording for the reference model(s)."""
    references = [r["reference_model"] for r in by_reference]
    if len(references) == 1:
        return f"On {references[0]}", f"on {references[0]}"
    return (
        "On the reference models",
        f"on each request's reference model (its routing policy's, else {reference_model()})",
    )


def _totals_section(totals: dict[str, Any]) -> list[Flowable]:
    """The totals table (requests, tokens, exact cost, latency)."""
    return [
        Paragraph("Totals", STYLES["Heading2"]),
        _table(
            ["Measure", "Value"],
            [
                ["Requests", f"{totals['requests']:,}"],
                ["Failed requests", f"{totals['errors']:,}"],
                ["Requests served by a fallback", f"{totals['fallbacks']:,}"],
                ["Tokens in", f"{totals['tokens_in']:,}"],
                ["Tokens out", f"{totals['tokens_out']:,}"],
                ["Cached tokens in", f"{totals['tokens_cached']:,}"],
                ["Total cost (USD)", exact(totals["cost"])],
                [
                    "Average latency (ms)",
                    totals["avg_latency_ms"] if totals["avg_latency_ms"] is not None else "n/a",
                ],
            ],
            [90 * mm, 70 * mm],
        ),
        Spacer(1, 6 * mm),
    ]


def _savings_section(
    totals: dict[str, Any], by_reference: list[dict[str, Any]], measured: str
) -> list[Flowable]:
    """Savings against the reference model(s): the overall table, then one line per model."""
    ratio = (
        f"{totals['savings'] / totals['reference_cost'] * 100:.1f}%"
        if totals["reference_cost"]
        else "n/a"
    )
    return [
        Paragraph("Savings against the reference model", STYLES["Heading2"]),
        Paragraph(
            f"What the same tokens would have cost {measured} at its list price in force at "
            "the time of each request.",
            STYLES["BodyText"],
        ),
        _table(
            ["Measure", "USD"],
            [
                ["Actual spend", exact(totals["cost"])],
                ["Reference cost", exact(totals["reference_cost"])],
                ["Savings", exact(totals["savings"])],
                ["Prompt cache given up by switching", exact(totals["cache_lost"])],
                ["Savings net of it", exact(totals["savings_net"])],
                ["Savings ratio", ratio],
            ],
            [90 * mm, 70 * mm],
        ),
        Spacer(1, 4 * mm),
        Paragraph("Savings by reference model", STYLES["Heading3"]),
        _reference_table(by_reference),
        Spacer(1, 6 * mm),
    ]


def _daily_spend(report: Report, zone: zoneinfo.ZoneInfo, reference_label: str) -> list[Flowable]:
    """The daily spend chart (actual against reference), ending the summary page."""
    series = run(report, _query(report, bucket="day"), analytics_timeseries)
    story: list[Flowable] = [Paragraph("Daily spend", STYLES["Heading2"])]
    if series:
        chart = _chart(series, zone, reference_label)
        story.append(Image(chart, width=170 * mm, height=73 * mm))
    else:
        story.append(Paragraph("No usage in this period.", STYLES["BodyText"]))
    story.append(PageBreak())
    return story


def _breakdowns(report: Report) -> list[Flowable]:
    """One page per ``BREAKDOWNS`` dimension, reporting progress after each."""
    story: list[Flowable] = []
    for i, (dim, title) in enumerate(BREAKDOWNS):
        rows = run(report, _query(report, group_by=(dim,)), analytics_breakdown, limit=100_000)
        labels = dimension_labels(report.organization_id, rows, (dim,)).get(dim, {})
        story.append(Paragraph(title, STYLES["Heading2"]))
        story.append(_breakdown_table(rows, dim, labels))
        story.append(PageBreak())
        report_progress(report.pk, 20 + (i + 1) * 12)
    return story


def _keys_and_budgets(report: Report) -> list[Flowable]:
    """The last page: the top ``TOP_KEYS`` API keys by spend, then the budget status."""
    keys = run(report, _query(report, group_by=("key",)), analytics_breakdown, limit=TOP_KEYS)
    labels = dimension_labels(report.organization_id, keys, ("key",)).get("key", {})
    return [
        Paragraph(f"Top {TOP_KEYS} API keys by spend", STYLES["Heading2"]),
        _breakdown_table(keys, "key", labels),
        Spacer(1, 6 * mm),
        Paragraph("Budget status (current period)", STYLES["Heading2"]),
        _budget_table(report),
    ]


def _build(report: Report, path: Path, story: list[Flowable]) -> int:
    """Lay out ``story`` on A4 with a footer on every page; returns the number of pages."""
    pages = {"n": 0}

    def footer(canvas: Any, doc: Any) -> None:
        pages["n"] = doc.page
        canvas.setFont("Helvetica", 7)
        canvas.drawString(15 * mm, 10 * mm, f"{report.organization.slug} - report {report.pk}")
        canvas.drawRightString(195 * mm, 10 * mm, f"page {doc.page}")

    doc = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=18 * mm,
        title=f"Spend report {report.organization.slug}",
        author="MegaRouter",
    )
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return pages["n"]


def _breakdown_table(rows: list[dict[str, Any]], dim: str, labels: dict[Any, str]) -> Any:
    if not rows:
        return Paragraph("No usage.", STYLES["BodyText"])
    body = []
    for r in rows:
        value = r[dim]
        name = labels.get(value, str(value)) if value not in (None, "") else "(none)"
        if dim in labels or dim in ("department", "team", "project", "key", "member"):
            name = f"{name} (#{value})" if value else name
        body.append(
            [
                Paragraph(str(name)[:80], STYLES["BodyText"]),
                f"{r['requests']:,}",
                f"{r['tokens_in'] + r['tokens_out']:,}",
                money(r["cost"]),
                money(r["reference_cost"]),
                money(r["savings"]),
            ]
        )
    return _table(
        [dim.title(), "Requests", "Tokens", "Cost USD", "Reference USD", "Savings USD"],
        body,
        [58 * mm, 20 * mm, 24 * mm, 26 * mm, 26 * mm, 26 * mm],
    )


def _reference_table(rows: list[dict[str, Any]]) -> Any:
    """Per reference model, exact to 12 places (the lines add up to the totals above)."""
    if not rows:
        return Paragraph("No usage.", STYLES["BodyText"])
    body = [
        [
            Paragraph(str(r["reference_model"])[:80], STYLES["BodyText"]),
            f"{r['requests']:,}",
            exact(r["cost"]),
            exact(r["reference_cost"]),
            exact(r["savings"]),
        ]
        for r in rows
    ]
    return _table(
        ["Reference model", "Requests", "Actual USD", "Reference USD", "Savings USD"],
        body,
        [52 * mm, 18 * mm, 36 * mm, 37 * mm, 37 * mm],
    )


def _budget_table(report: Report) -> Any:
    budgets = list(
        Budget.objects.filter(organization_id=report.organization_id)
        .select_related("organization", "node")
        .order_by("id")
    )
    if report.node.parent_id is not None:
        budgets = [b for b in budgets if b.node.path.startswith(report.node.path)]
    if not budgets:
        return Paragraph("No budgets.", STYLES["BodyText"])
    current = budgets_current_spend(budgets)
    rows = []
    for b in budgets:
        _start, spent = current[b.pk]
        used = f"{spent / b.limit_usd * 100:.1f}%" if b.limit_usd else "n/a"
        rows.append(
            [
                Paragraph(f"{b.name or b.scope} ({b.scope} #{b.scope_id})", STYLES["BodyText"]),
                b.period,
                money(b.limit_usd),
                money(spent),
                used,
                b.mode,
            ]
        )
    return _table(
        ["Budget", "Period", "Limit USD", "Spent USD", "Used", "Mode"],
        rows,
        [62 * mm, 20 * mm, 26 * mm, 30 * mm, 18 * mm, 18 * mm],
    )
