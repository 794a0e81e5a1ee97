"""The spend dashboard (analytics rollups through ``billing.analytics.selectors``) and reports
(``billing.reports.services``: queued for Celery, polled, downloaded through a signed link).

Both are scoped exactly like billing's analytics API: a caller with ``view_billing`` on the
root sees the organization; anyone else the projects under the nodes where they hold it."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.utils import timezone

from billing.analytics import selectors as analytics
from billing.analytics.params import analytics_query_parse
from billing.errors import InvalidInput as BillingInvalidInput
from billing.models import Report, ReportKind, ReportStatus
from billing.reports import services as reports
from console.forms import ReportCreateForm, add_service_errors
from console.views.base import ConsoleOrgView, page_of
from orgs.models import Node, NodeKind, NodeUserPermission
from orgs.roles import VIEW_BILLING

# Dimensions the dashboard offers for its breakdown (label, analytics dimension).
BREAKDOWNS = (
    ("model", "Model"),
    ("provider", "Provider"),
    ("department", "Department"),
    ("team", "Team"),
    ("project", "Project"),
    ("member", "Member"),
    ("key", "API key"),
)
PERIODS = (("7", "Last 7 days"), ("30", "Last 30 days"), ("90", "Last 90 days"))


def billing_scope_column(view: ConsoleOrgView) -> str | None:
    """The column the caller's visibility filters on (as billing's analytics API): None
    organization-wide; ``team_id`` when every grant is at a department or team; ``project_id``
    when one is on a project alone."""
    if view.scope.can_at_root(VIEW_BILLING):
        return None
    on_project = NodeUserPermission.objects.filter(
        user_id=view.scope.user.pk,
        permission__codename=VIEW_BILLING,
        content_object__organization_id=view.organization.pk,
        content_object__kind=NodeKind.PROJECT,
        content_object__archived_at__isnull=True,
    ).exists()
    return "project_id" if on_project else "team_id"


def scoped_rows(view: ConsoleOrgView, source: type[Model], column: str | None) -> QuerySet[Any]:
    qs = source._default_manager.filter(organization_id=view.organization.pk)
    if column is not None:
        qs = qs.filter(**{f"{column}__in": view.scope.visible_ids(VIEW_BILLING)})
    return qs


def nice_ticks(top: Decimal, *, most: int = 4) -> list[Decimal]:
    """Round values from 0 to at least ``top`` for a y axis, at most ``most`` steps: a step of
    1, 2 or 5 times a power of ten ($0, $0.05, $0.10, ...)."""
    if top <= 0:
        return [Decimal(0)]
    raw = top / most
    power = Decimal(10) ** (raw.adjusted())
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    count = int((top / step).to_integral_value(rounding="ROUND_CEILING"))
    return [step * i for i in range(count + 1)]


GUTTER = 64  # the y axis labels' width, in the chart's units


def spend_chart(
    points: list[dict[str, Any]],
    days: list[dt.date],
    zone: zoneinfo.ZoneInfo,
    *,
    width: int = 720,
    height: int = 180,
) -> dict[str, Any]:
    """Geometry of the daily chart: actual spend as bars, the reference cost as a line, a y
    axis of round money values (gridlines and labels) and day labels."""
    by_day = {p["t"].astimezone(zone).date(): p for p in points}
    series = [
        {
            "day": d,
            "cost": by_day[d]["cost"] if d in by_day else Decimal(0),
            "reference": by_day[d]["reference_cost"] if d in by_day else Decimal(0),
            "requests": by_day[d]["requests"] if d in by_day else 0,
        }
        for d in days
    ]
    highest = max([s["cost"] for s in series] + [s["reference"] for s in series] + [Decimal(0)])
    ticks = nice_ticks(highest)
    top = ticks[-1]
    n = max(len(series), 1)
    plot = width - GUTTER
    slot = plot / n
    bar = max(slot * 0.7, 1.0)
    usable = height - 20

    def y(value: Decimal) -> float:
        return round(height - (float(value / top * usable) if top > 0 else 0.0), 2)

    bars = []
    line = []
    for i, s in enumerate(series):
        top_y = y(s["cost"])
        centre = round(GUTTER + i * slot + slot / 2, 2)
        bars.append(
            {
                **s,
                "x": round(GUTTER + i * slot + (slot - bar) / 2, 2),
                "y": top_y,
                "w": round(bar, 2),
                "h": round(height - top_y, 2),
                "label": i % max(n // 7, 1) == 0,
                "lx": centre,
            }
        )
        line.append(f"{centre},{y(s['reference'])}")
    return {
        "width": width,
        "height": height,
        "gutter": GUTTER,
        "bars": bars,
        "line": " ".join(line),
        "max": highest,
        "ticks": [{"value": t, "y": y(t)} for t in ticks],
    }


def sparkline(values: list[float | None], *, width: int = 120, height: int = 28) -> dict[str, Any]:
    """A small line over ``values`` (None: no data that hour, the line skips it): the
    polyline's points, the highest value and the last known one."""
    known = [v for v in values if v is not None]
    top = max(known) if known else 0.0
    n = max(len(values) - 1, 1)
    segments: list[list[str]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        y = height - 2 - ((v / top) * (height - 4) if top > 0 else 0.0)
        segments[-1].append(f"{round(i * width / n, 1)},{round(y, 1)}")
    return {
        "width": width,
        "height": height,
        # a lone point (one hour with data between gaps) as a short dash, so it shows
        "lines": [
            " ".join(seg if len(seg) > 1 else [*seg, _nudged(seg[0])]) for seg in segments if seg
        ],
        "max": top,
        "last": known[-1] if known else None,
        "points": len(known),
    }


def _nudged(point: str) -> str:
    x, y = point.split(",")
    return f"{round(float(x) + 2, 1)},{y}"


class SpendView(ConsoleOrgView):
    """Spend over time, savings against the reference model, and a breakdown by the chosen
    dimension, over a period (preset or dates)."""

    permission = VIEW_BILLING
    section = "spend"

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        group = request.GET.get("by", "model")
        if group not in dict(BREAKDOWNS):
            group = "model"
        params: dict[str, Any] = {"days": request.GET.get("days") or "30"}
        if request.GET.get("from") or request.GET.get("to"):
            params = {"from": request.GET.get("from", ""), "to": request.GET.get("to", "")}
        errors: dict[str, Any] = {}
        try:
            query = analytics_query_parse(params, time_zone=self.organization.time_zone)
        except BillingInvalidInput as exc:
            errors = {name: " ".join(texts) for name, texts in exc.errors.items()}
            query = analytics_query_parse({"days": "30"}, time_zone=self.organization.time_zone)
        column = billing_scope_column(self)
        totals_source = analytics.analytics_source(query, scope_column=column)
        totals_rows = scoped_rows(self, totals_source, column)
        references = analytics.analytics_reference_models(totals_rows, query)
        totals = analytics.analytics_totals(totals_rows, query, reference_models=references)

        series_query = analytics.AnalyticsQuery(
            start=query.start, end=query.end, bucket="day", time_zone=query.time_zone
        )
        series_source = analytics.analytics_source(series_query, scope_column=column)
        points = analytics.analytics_timeseries(
            scoped_rows(self, series_source, column), series_query
        )
        zone = zoneinfo.ZoneInfo(query.time_zone)
        days = analytics.period_days(query)
        first, last = days[0], days[-1]

        breakdown_query = analytics.AnalyticsQuery(
            start=query.start, end=query.end, group_by=(group,), time_zone=query.time_zone
        )
        breakdown_source = analytics.analytics_source(breakdown_query, scope_column=column)
        rows = analytics.analytics_breakdown(
            scoped_rows(self, breakdown_source, column), breakdown_query, limit=50
        )
        labels = analytics.dimension_labels(self.organization.pk, rows, (group,)).get(group, {})
        for row in rows:
            value = row[group]
            row["label"] = labels.get(value, value) if value else "—"
            row["share"] = (
                (row["cost"] / totals["cost"] * 100).quantize(Decimal("0.1"))
                if totals["cost"] > 0
                else Decimal(0)
            )
        return self.render(
            "console/spend.html",
            {
                "query": query,
                "first_day": first,
                "last_day": last,
                "days_param": params.get("days", ""),
                "group": group,
                "group_label": dict(BREAKDOWNS)[group],
                "breakdowns": BREAKDOWNS,
                "periods": PERIODS,
                "errors": errors,
                "totals": totals,
                "chart": spend_chart(points, days, zone),
                "rows": rows,
                "reference_model": analytics.reference_model_name(),
                "reference_models": references,
                "whole_org": column is None,
            },
            status=400 if errors else 200,
        )


def _report_nodes(view: ConsoleOrgView) -> QuerySet[Node]:
    return Node.objects.filter(
        organization=view.organization,
        archived_at__isnull=True,
        id__in=view.scope.visible_ids(VIEW_BILLING),
    ).order_by("path")


def report_row(report: Report, user_id: int) -> dict[str, Any]:
    """What the list and the JSON status view show of one report."""
    done = report.status == ReportStatus.DONE
    return {
        "id": report.pk,
        "kind": report.kind,
        "status": report.status,
        "progress": report.progress,
        "rows": report.rows,
        "pages": report.pages,
        "size_bytes": report.size_bytes,
        "error": report.error,
        "download_url": reports.report_download_url(report=report, user_id=user_id)
        if done
        else None,
    }


class ReportsView(ConsoleOrgView):
    """Request a CSV or PDF report; the list with status and progress (polled while any is
    pending or running); download links signed for the caller."""

    permission = VIEW_BILLING
    post_permission = VIEW_BILLING  # a report is a read: the same permission as the API
    section = "reports"

    def _visible(self) -> QuerySet[Report]:
        return (
            Report.objects.filter(
                organization=self.organization,
                kind__in=(ReportKind.CSV, ReportKind.PDF, ReportKind.STATEMENT),
                node_id__in=self.scope.visible_ids(VIEW_BILLING),
            )
            .select_related("organization", "node", "requested_by")
            .order_by("-id")
        )

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        today = timezone.now().astimezone(zoneinfo.ZoneInfo(self.organization.time_zone)).date()
        form = ReportCreateForm(
            nodes=_report_nodes(self),
            initial={"kind": "pdf", "since": today - dt.timedelta(days=29), "until": today},
        )
        return self._page(form)

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = ReportCreateForm(request.POST, nodes=_report_nodes(self))
        if form.is_valid():
            data = form.cleaned_data
            node = data["node"]
            self.scope.require(node, VIEW_BILLING)
            try:
                query = analytics_query_parse(
                    {"from": data["since"].isoformat(), "to": data["until"].isoformat()},
                    time_zone=self.organization.time_zone,
                )
                report = reports.report_create(
                    actor=self.scope.actor,
                    organization=self.organization,
                    node=node,
                    kind=data["kind"],
                    start=query.start,
                    end=query.end,
                )
            except BillingInvalidInput as exc:
                add_service_errors(form, exc, {"from": "since", "to": "until"})
            else:
                messages.success(
                    request,
                    f"{ReportKind(report.kind).label} of {node.name} requested: it is being built.",
                )
                return redirect("console:reports", org_slug=org_slug)
        return self._page(form, status=400)

    def _page(self, form: ReportCreateForm, status: int = 200) -> HttpResponse:
        page = page_of(self.request, self._visible())
        user_id = self.request.user.pk
        zone = zoneinfo.ZoneInfo(self.organization.time_zone)
        rows = [
            {
                "r": r,
                # the period in the organization's days, the last one included
                "first_day": r.period_start.astimezone(zone).date(),
                "last_day": (r.period_end - dt.timedelta(microseconds=1)).astimezone(zone).date(),
                **report_row(r, user_id),
            }
            for r in page.object_list
        ]
        busy = any(r["status"] in (ReportStatus.PENDING, ReportStatus.RUNNING) for r in rows)
        return self.render(
            "console/reports.html",
            {"form": form, "page": page, "rows": rows, "busy": busy},
            status=status,
        )


class ReportStatusView(ReportsView):
    """``GET /reports/status/?ids=1,2``: the status of the caller's visible reports, as JSON
    (the list page polls it while a report is being built)."""

    post_permission = None

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:  # type: ignore[override]
        ids = [int(v) for v in request.GET.get("ids", "").split(",") if v.strip().isdigit()][:50]
        user_id = request.user.pk
        found = [report_row(r, user_id) for r in self._visible().filter(pk__in=ids)]
        response = JsonResponse({"reports": found})
        response["Cache-Control"] = "no-store"
        return response
