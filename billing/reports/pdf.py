"""PDF spend report (reportlab; the daily chart is reportlab vector graphics, so its axis
labels are text in the PDF).

Page 1 is the executive summary: the title block (organization, scope, period, filters), the
key figures (total spend, savings net of the prompt cache given up, requests), spend by
department, the top models and the budget status (limit, used, remaining). The sections that
follow flow one after the other (no page per table; a heading stays with its table's first
rows): totals (exact to 12 places), savings against the reference models (each request on its
routing policy's reference model; one line per reference model), the daily spend chart over the
period's days, breakdowns by team / project / model / provider, and the top keys. Every figure
comes from the analytics selectors over the rollups, so it equals the API (and the CSV) for the
same period and scope.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.utils import timezone
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    CondPageBreak,
    Flowable,
    LongTable,
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
    period_days,
    scoped_queryset,
)
from billing.models import Budget, Report
from billing.money import usd_text
from billing.reports.progress import report_progress
from billing.selectors import budgets_current_spend

STYLES = getSampleStyleSheet()
TOP_KEYS = 25
TOP_MODELS = 5
BREAKDOWNS = (  # after the summary page, which has the departments
    ("team", "Spend by team"),
    ("project", "Spend by project"),
    ("model", "Spend by model"),
    ("provider", "Spend by provider"),
)
FRAME_WIDTH = 180 * mm  # A4 less the 15 mm margins
ROW_HEIGHT = 6 * mm  # what a heading keeps with it: its table's header and first rows
CHART_HEIGHT = 75 * mm
ACTUAL = colors.HexColor("#1f5fbf")
REFERENCE = colors.HexColor("#c0392b")


def money(amount: Any) -> str:
    """An amount in a table or on an axis: the console's formatter (``billing.money.usd_text``)."""
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


def _section(
    title: str, body: Flowable, *, rows: int = 3, style: str = "Heading2"
) -> list[Flowable]:
    """A heading and its table: a new page first unless the heading fits with the table's
    header and first ``rows`` rows (long tables then split, repeating their header)."""
    return [
        CondPageBreak(10 * mm + (rows + 1) * ROW_HEIGHT),
        Paragraph(title, STYLES[style]),
        body,
    ]


def _period_label(report: Report, zone: zoneinfo.ZoneInfo) -> str:
    start = report.period_start.astimezone(zone)
    end = report.period_end.astimezone(zone)
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({zone.key}, end excluded)"


def report_pdf_write(*, report: Report, path: Path) -> int:
    """Write the spend report to ``path``; returns the number of pages.

    Steps, in page order:
    1. page 1, the executive summary (``_executive_summary``): title block, key figures, spend
       by department, top models, budget status;
    2. totals and savings against the reference models (``_summary``);
    3. the daily spend chart over the period's days (``_daily_spend``);
    4. the breakdowns by team, project, model and provider (``_breakdowns``);
    5. the top keys (``_top_keys``);
    6. the layout on A4 with a page footer (``_build``).
    Progress is reported after the summary, the chart and each breakdown.
    """
    zone = zoneinfo.ZoneInfo(report.organization.time_zone)
    totals = run(report, _query(report), analytics_totals)
    by_model = _breakdown(report, "model")
    story = _executive_summary(report, zone, totals, by_model)
    summary, reference_label = _summary(report, totals)
    story += summary
    report_progress(report.pk, 10)
    story += _daily_spend(report, zone, reference_label)
    report_progress(report.pk, 20)
    story += _breakdowns(report, by_model)
    story += _top_keys(report)
    return _build(report, path, story)


def _breakdown(report: Report, dim: str, *, limit: int = 100_000) -> list[dict[str, Any]]:
    return run(report, _query(report, group_by=(dim,)), analytics_breakdown, limit=limit)


def _executive_summary(
    report: Report,
    zone: zoneinfo.ZoneInfo,
    totals: dict[str, Any],
    by_model: list[dict[str, Any]],
) -> list[Flowable]:
    """Page 1: the title block, the key figures, spend by department (the top-level nodes),
    the top ``TOP_MODELS`` models and the budget status."""
    departments = _breakdown(report, "department")
    labels = dimension_labels(report.organization_id, departments, ("department",))
    models = by_model[:TOP_MODELS]
    return [
        *_title_block(report, zone),
        *_section("Summary", _key_figures(report, totals), rows=4),
        Spacer(1, 4 * mm),
        *_section(
            "Spend by department",
            _breakdown_table(departments, "department", labels.get("department", {})),
        ),
        Spacer(1, 4 * mm),
        *_section(f"Top {TOP_MODELS} models by spend", _breakdown_table(models, "model", {})),
        Spacer(1, 4 * mm),
        *_section("Budget status (current period)", _budget_table(report)),
        Spacer(1, 6 * mm),
    ]


def _title_block(report: Report, zone: zoneinfo.ZoneInfo) -> list[Flowable]:
    """Organization, scope, period, filters and generation time, atop page 1."""
    body = STYLES["BodyText"]
    scope = (
        "whole organization"
        if report.node.parent_id is None
        else f"{report.node.kind} {report.node.name}"
    )
    return [
        Paragraph("MegaRouter spend report", STYLES["Title"]),
        Paragraph(f"Organization: {report.organization.name} ({report.organization.slug})", body),
        Paragraph(f"Scope: {scope}", body),
        Paragraph(f"Period: {_period_label(report, zone)}", body),
        Paragraph(f"Filters: {report.filters or 'none'}", body),
        Paragraph(f"Generated: {timezone.now().astimezone(zone):%Y-%m-%d %H:%M %Z}", body),
        Spacer(1, 2 * mm),
    ]


def _key_figures(report: Report, totals: dict[str, Any]) -> LongTable:
    """The period, total spend, savings net of the prompt cache given up, and requests."""
    days = period_days(_query(report))
    span = f"{days[0]:%Y-%m-%d}" if len(days) == 1 else f"{days[0]:%Y-%m-%d} to {days[-1]:%Y-%m-%d}"
    ratio = (
        f" ({totals['savings_net'] / totals['reference_cost'] * 100:.1f}% of the reference cost)"
        if totals["reference_cost"]
        else ""
    )
    return _table(
        ["Figure", "Value"],
        [
            ["Period", f"{span} ({len(days)} day{'s' if len(days) != 1 else ''})"],
            ["Total spend", money(totals["cost"])],
            ["Savings, net of prompt cache lost", f"{money(totals['savings_net'])}{ratio}"],
            ["Requests", f"{totals['requests']:,}"],
        ],
        [70 * mm, 110 * mm],
    )


def _summary(report: Report, totals: dict[str, Any]) -> tuple[list[Flowable], str]:
    """Totals and savings (overall and per reference model); also the chart's reference
    line label."""
    by_reference = _breakdown(report, "reference_model", limit=1000)
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
    table = _table(
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
    )
    return [*_section("Totals", table, rows=8), Spacer(1, 6 * mm)]


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
        CondPageBreak(10 * mm + 7 * ROW_HEIGHT + 12 * mm),
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
        *_section("Savings by reference model", _reference_table(by_reference), style="Heading3"),
        Spacer(1, 6 * mm),
    ]


def _daily_spend(report: Report, zone: zoneinfo.ZoneInfo, reference_label: str) -> list[Flowable]:
    """The daily spend chart (actual against reference) over the period's days; a sentence
    instead when nothing was spent or measured."""
    series = run(report, _query(report, bucket="day"), analytics_timeseries)
    heading = [CondPageBreak(10 * mm + CHART_HEIGHT), Paragraph("Daily spend", STYLES["Heading2"])]
    if not any(r["cost"] or r["reference_cost"] for r in series):
        return [*heading, Paragraph("No spend in this period.", STYLES["BodyText"])]
    days = period_days(_query(report))
    by_day = {r["t"].astimezone(zone).date(): r for r in series}
    actual = [by_day[d]["cost"] if d in by_day else Decimal(0) for d in days]
    reference = [by_day[d]["reference_cost"] if d in by_day else Decimal(0) for d in days]
    return [*heading, daily_chart(days, actual, reference, reference_label), Spacer(1, 6 * mm)]


def day_ticks(days: list[dt.date]) -> list[tuple[int, str]]:
    """(index into ``days``, label) for the chart's x axis: every day with its date up to a
    week; about eight ticks ("2 Nov") up to three months; else the first of each month ("Jan",
    with the year on the first tick and on January)."""
    if len(days) <= 7:
        return [(i, f"{d:%Y-%m-%d}") for i, d in enumerate(days)]
    if len(days) <= 92:
        step = math.ceil(len(days) / 8)
        return [(i, f"{d.day} {d:%b}") for i, d in enumerate(days) if i % step == 0]
    firsts = [(i, d) for i, d in enumerate(days) if d.day == 1]
    return [
        (i, f"{d:%b %Y}" if n == 0 or d.month == 1 else f"{d:%b}")
        for n, (i, d) in enumerate(firsts)
    ]


def daily_chart(
    days: list[dt.date], actual: list[Decimal], reference: list[Decimal], reference_label: str
) -> Drawing:
    """Actual and reference spend per day: x from the first to the last day of the period
    (one day is one point with its date), y from zero in money labels."""
    drawing = Drawing(FRAME_WIDTH, CHART_HEIGHT)
    plot = LinePlot()
    plot.x, plot.y = 22 * mm, 14 * mm
    plot.width, plot.height = FRAME_WIDTH - 26 * mm, CHART_HEIGHT - 26 * mm
    plot.data = [
        [(i, float(v)) for i, v in enumerate(actual)],
        [(i, float(v)) for i, v in enumerate(reference)],
    ]
    plot.lines[0].strokeColor, plot.lines[0].strokeWidth = ACTUAL, 1.2
    plot.lines[1].strokeColor, plot.lines[1].strokeWidth = REFERENCE, 1
    plot.lines[1].strokeDashArray = (3, 2)
    if len(days) <= 62:
        for line, color in ((plot.lines[0], ACTUAL), (plot.lines[1], REFERENCE)):
            line.symbol = makeMarker("FilledCircle", size=3, fillColor=color, strokeColor=color)
    ticks = day_ticks(days)
    names = dict(ticks)
    x = plot.xValueAxis
    x.valueMin, x.valueMax = -0.5, len(days) - 0.5
    x.valueSteps = [i for i, _ in ticks]
    x.labelTextFormat = lambda v: names.get(round(v), "")
    x.labels.fontName, x.labels.fontSize = "Helvetica", 7
    y = plot.yValueAxis
    top = max(max(actual), max(reference))
    y.valueMin, y.valueMax = 0, float(top) * 1.1  # top > 0: _daily_spend said so otherwise
    y.labelTextFormat = money
    y.labels.fontName, y.labels.fontSize = "Helvetica", 7
    y.visibleGrid, y.gridStrokeColor, y.gridStrokeWidth = True, colors.HexColor("#dddddd"), 0.3
    drawing.add(plot)
    legend = Legend()
    legend.x, legend.y = 24 * mm, CHART_HEIGHT - 4 * mm
    legend.alignment, legend.columnMaximum = "right", 1
    legend.fontName, legend.fontSize = "Helvetica", 7
    legend.dx = legend.dy = 6
    legend.deltax = 40 * mm
    legend.colorNamePairs = [(ACTUAL, "Actual spend per day"), (REFERENCE, reference_label)]
    drawing.add(legend)
    return drawing


def _breakdowns(report: Report, by_model: list[dict[str, Any]]) -> list[Flowable]:
    """The ``BREAKDOWNS`` tables one after the other, reporting progress after each (the model
    breakdown is the one page 1's top models came from)."""
    story: list[Flowable] = []
    for i, (dim, title) in enumerate(BREAKDOWNS):
        rows = by_model if dim == "model" else _breakdown(report, dim)
        labels = dimension_labels(report.organization_id, rows, (dim,)).get(dim, {})
        story += _section(title, _breakdown_table(rows, dim, labels))
        story.append(Spacer(1, 6 * mm))
        report_progress(report.pk, 20 + (i + 1) * 15)
    return story


def _top_keys(report: Report) -> list[Flowable]:
    """The top ``TOP_KEYS`` API keys by spend."""
    keys = _breakdown(report, "key", limit=TOP_KEYS)
    labels = dimension_labels(report.organization_id, keys, ("key",)).get("key", {})
    return _section(f"Top {TOP_KEYS} API keys by spend", _breakdown_table(keys, "key", labels))


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
    """The budgets on the report's subtree, each with its limit, what its current period has
    used and what remains (negative once over)."""
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
        share = f"{spent / b.limit_usd * 100:.1f}%" if b.limit_usd else "n/a"
        rows.append(
            [
                Paragraph(f"{b.name or b.scope} ({_budget_target(b)})", STYLES["BodyText"]),
                f"{b.period}, {b.mode}",
                money(b.limit_usd),
                money(spent),
                money(b.limit_usd - spent),
                share,
            ]
        )
    return _table(
        ["Budget", "Period, mode", "Limit USD", "Used USD", "Remaining USD", "Used"],
        rows,
        [58 * mm, 28 * mm, 26 * mm, 26 * mm, 26 * mm, 16 * mm],
    )


def _budget_target(b: Budget) -> str:
    return f"tag {b.tag}" if b.tag else f"{b.scope} #{b.scope_id}"
