"""Analytics API (/api/orgs/{org}/analytics/...) and reports API (/api/orgs/{org}/reports/),
behind the orgs tenancy choke point (``OrgScopedViewSet``).

Visibility: rows are restricted to the projects inside the subtrees where the caller holds
``view_billing`` (a team lead sees their team; a billing manager at the root, the whole
organization). Another organization answers 404.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet
from django.http import FileResponse, Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing.analytics import selectors
from billing.analytics.params import analytics_query_parse
from billing.analytics.selectors import (
    DIMENSIONS,
    FAILURE_DIMENSIONS,
    FAILURE_WHOLE_NUMBERS,
    ID_DIMENSIONS,
)
from billing.api import analytics_serializers as s
from billing.errors import InvalidInput
from billing.models import FailedRequestCount, Report, ReportStatus
from billing.reports import services as reports
from orgs.api.base import OrgScopedViewSet
from orgs.errors import NotAllowed
from orgs.models import Node, NodeKind, NodeUserPermission
from orgs.roles import VIEW_BILLING
from orgs.selectors import has_perm_at_root, root_node

PERIOD_PARAMS = [
    OpenApiParameter("from", str, description="Start date (org time zone) or ISO date-time"),
    OpenApiParameter("to", str, description="End date (included) or ISO date-time (excluded)"),
    OpenApiParameter("days", int, description="The last N days, today included (default 30)"),
    *[OpenApiParameter(d, str, description=f"Filter: {d} (comma-separated)") for d in DIMENSIONS],
]
FAILURE_PARAMS = [
    *PERIOD_PARAMS[:3],
    *[
        OpenApiParameter(d, str, description=f"Filter: {d} (comma-separated)")
        for d in FAILURE_DIMENSIONS
    ],
]
GROUP_PARAM = OpenApiParameter("group_by", str, description="Up to two dimensions, comma-separated")
BUCKET_PARAM = OpenApiParameter("bucket", str, enum=["hour", "day"])


@extend_schema(tags=["analytics"])
class AnalyticsViewSet(OrgScopedViewSet):
    """Spend, tokens, savings and latency over a period, from the rollups."""

    view_permission = VIEW_BILLING
    scope_resource = "analytics"
    action_permissions = {
        "summary": VIEW_BILLING,
        "breakdown": VIEW_BILLING,
        "timeseries": VIEW_BILLING,
        "failures": VIEW_BILLING,
    }
    node_field: str | None = "project_id"
    source: type[Model] = Report  # replaced per request by the chosen rollup table

    def get_base_queryset(self) -> QuerySet[Any]:
        return self.source._default_manager.all()

    def _scope_column(self) -> str | None:
        """None for organization-wide viewers; else the rollup column their visible subtrees
        are filtered on: ``team_id`` when every grant is at a department or team (the
        team-level tables answer), ``project_id`` when some grant is on a project alone."""
        if self.service_token is not None:  # its one subtree
            if self.holds_at_root(VIEW_BILLING):
                return None
            return "project_id" if self.service_token.node.kind == NodeKind.PROJECT else "team_id"
        user_id, org_id = self.request.user.pk, self.organization.pk
        assert user_id is not None  # IsAuthenticated ran
        if has_perm_at_root(user_id=user_id, organization_id=org_id, perm=VIEW_BILLING):
            return None
        on_project = NodeUserPermission.objects.filter(
            user_id=user_id,
            permission__codename=VIEW_BILLING,
            content_object__organization_id=org_id,
            content_object__kind=NodeKind.PROJECT,
        ).exists()
        return "project_id" if on_project else "team_id"

    def _prepare(
        self, request: Request, params: Any = None
    ) -> tuple[selectors.AnalyticsQuery, QuerySet[Any]]:
        query = analytics_query_parse(
            request.query_params if params is None else params,
            time_zone=self.organization.time_zone,
        )
        scope = self._scope_column()
        self.node_field = scope  # the choke point filters this column on the visible nodes
        self.source = selectors.analytics_source(query, scope_column=scope)
        return query, self.get_queryset()

    def _envelope(
        self, query: selectors.AnalyticsQuery, reference_models: list[str]
    ) -> dict[str, Any]:
        return {
            "organization": self.organization.slug,
            "from": query.start.isoformat(),
            "to": query.end.isoformat(),
            "time_zone": query.time_zone,
            "filters": {k: list(v) for k, v in query.filters.items()},
            # The default reference model (requests whose routing policy names none) ...
            "reference_model": selectors.reference_model_name(),
            # ... and the ones these figures' savings are measured against (each request on
            # its own policy's reference model): group_by=reference_model splits them.
            "reference_models": reference_models,
            "source": self.source._meta.model_name,
        }

    def _rows(
        self, rows: list[dict[str, Any]], query: selectors.AnalyticsQuery
    ) -> list[dict[str, Any]]:
        labels = selectors.dimension_labels(self.organization.pk, rows, query.group_by)
        out = []
        for r in rows:
            item: dict[str, Any] = {}
            if "t" in r:
                item["bucket"] = r["t"].isoformat()
            for d in query.group_by:
                item[d] = r[d]
                if d in ID_DIMENSIONS:
                    item[f"{d}_name"] = labels.get(d, {}).get(r[d])
            item.update(s.measures(r))
            out.append(item)
        return out

    @extend_schema(parameters=PERIOD_PARAMS, responses={200: None})
    def summary(self, request: Request, org_slug: str) -> Response:
        query, qs = self._prepare(request)
        models = selectors.analytics_reference_models(qs, query)
        totals = selectors.analytics_totals(qs, query, reference_models=models)
        return Response({**self._envelope(query, models), "totals": s.measures(totals)})

    @extend_schema(parameters=[*PERIOD_PARAMS, GROUP_PARAM], responses={200: None})
    def breakdown(self, request: Request, org_slug: str) -> Response:
        query, qs = self._prepare(request)
        if not query.group_by:
            raise InvalidInput({"group_by": "Name one or two dimensions."})
        models = selectors.analytics_reference_models(qs, query)
        rows = selectors.analytics_breakdown(qs, query, reference_models=models)
        return Response(
            {
                **self._envelope(query, models),
                "group_by": list(query.group_by),
                "rows": self._rows(rows, query),
            }
        )

    @extend_schema(parameters=[*PERIOD_PARAMS, GROUP_PARAM, BUCKET_PARAM], responses={200: None})
    def timeseries(self, request: Request, org_slug: str) -> Response:
        params = request.query_params.copy()
        params.setdefault("bucket", "day")
        query, qs = self._prepare(request, params)
        models = selectors.analytics_reference_models(qs, query)
        rows = selectors.analytics_timeseries(qs, query, reference_models=models)
        return Response(
            {
                **self._envelope(query, models),
                "bucket": query.bucket,
                "group_by": list(query.group_by),
                "points": self._rows(rows, query),
            }
        )

    @extend_schema(parameters=[*FAILURE_PARAMS, GROUP_PARAM], responses={200: None})
    def failures(self, request: Request, org_slug: str) -> Response:
        """Requests that did not succeed (refused, failed, streams cut short), by status and
        error code, and grouped by up to two of key, model, provider, project, ... ."""
        query = analytics_query_parse(
            request.query_params,
            time_zone=self.organization.time_zone,
            dimensions=FAILURE_DIMENSIONS,
            whole_numbers=FAILURE_WHOLE_NUMBERS,
        )
        self.node_field = self._scope_column()
        self.source = FailedRequestCount
        qs = self.get_queryset()
        body: dict[str, Any] = {
            "organization": self.organization.slug,
            "from": query.start.isoformat(),
            "to": query.end.isoformat(),
            "time_zone": query.time_zone,
            "filters": {k: list(v) for k, v in query.filters.items()},
            "totals": selectors.failures_totals(qs, query),
            "group_by": list(query.group_by),
        }
        if query.group_by:
            rows = selectors.failures_breakdown(qs, query)
            labels = selectors.dimension_labels(self.organization.pk, rows, query.group_by)
            for row in rows:
                for d in query.group_by:
                    if d in ID_DIMENSIONS:
                        row[f"{d}_name"] = labels.get(d, {}).get(row[d])
            body["rows"] = rows
        return Response(body)


@extend_schema(tags=["analytics"])
class ReportViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """CSV and PDF reports built by Celery; poll ``status`` / ``progress``, then follow
    ``download_url`` (signed for the caller, expiring)."""

    serializer_class = s.ReportOut
    view_permission = VIEW_BILLING
    scope_resource = "reports"
    action_permissions = {"create": VIEW_BILLING, "download": VIEW_BILLING}
    node_field = "node"
    lookup_value_regex = r"\d+"
    list_filters = {"kind": ("kind", str), "status": ("status", str)}

    def get_base_queryset(self) -> QuerySet[Report]:
        return Report.objects.select_related("organization", "node")

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "link_owner": self._link_owner()}

    def _link_owner(self) -> int:
        """Whom a signed download link is for: the user's id, or a service token's id negated
        (never a user's id)."""
        if self.service_token is not None:
            return -self.service_token.pk
        return int(self.request.user.pk)

    @extend_schema(request=s.ReportCreateIn, parameters=PERIOD_PARAMS, responses={202: s.ReportOut})
    def create(self, request: Request, org_slug: str) -> Response:
        data = s.ReportCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        params = {
            **{k: v for k, v in request.query_params.items()},
            **_period_from_body(request.data),
        }
        params.update(
            {k: v for k, v in (data.validated_data.get("filters") or {}).items() if k in DIMENSIONS}
        )
        query = analytics_query_parse(params, time_zone=self.organization.time_zone)
        node_id = data.validated_data.get("node")
        found = (
            root_node(self.organization)
            if node_id is None
            else Node.objects.filter(organization=self.organization, pk=node_id).first()
        )
        if found is None:
            raise InvalidInput({"node": "No such node in this organization."})
        node = found
        self.require(node, VIEW_BILLING)
        report = reports.report_create(
            actor=self.actor,
            organization=self.organization,
            node=node,
            kind=data.validated_data["kind"],
            start=query.start,
            end=query.end,
            filters={k: list(v) for k, v in query.filters.items()},
        )
        report = self.get_base_queryset().get(pk=report.pk)
        return Response(
            s.ReportOut(report, context=self.get_serializer_context()).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(
        parameters=[OpenApiParameter("token", str, required=True)], responses={200: None}
    )
    def download(self, request: Request, org_slug: str, pk: str) -> FileResponse:
        report = self.get_object()
        token = request.query_params.get("token", "")
        if not reports.report_token_valid(report=report, user_id=self._link_owner(), token=token):
            raise NotAllowed("This download link is invalid or has expired.")
        if report.status != ReportStatus.DONE:
            raise Http404
        path = reports.report_path(report)
        if not path.exists():
            raise Http404
        content_type = "text/csv" if report.kind == "csv" else "application/pdf"
        ext = "csv" if report.kind == "csv" else "pdf"
        name = f"megarouter-{self.organization.slug}-{report.kind}-{report.pk}.{ext}"
        return FileResponse(
            path.open("rb"), as_attachment=True, filename=name, content_type=content_type
        )


def _period_from_body(body: Any) -> dict[str, Any]:
    if not hasattr(body, "get"):
        return {}
    return {k: body.get(k) for k in ("from", "to", "days") if body.get(k) not in (None, "")}
