"""The model catalog (search, filters, current prices) and the deployments serving it.

The catalog is global (operator-managed): every member of an organization may read it.
Provider credentials are never shown; their names only to organization-wide credential
managers."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db.models import Count, OuterRef, Q, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone

from billing.analytics import selectors as analytics
from billing.models import FailedRequestCount
from console.views.analytics import scoped_rows, sparkline
from console.views.base import ConsoleOrgView, page_of
from orgs.roles import MANAGE_CREDENTIALS, VIEW_BILLING, VIEW_NODE
from routing.health import stats_for
from routing.models import Deployment, Model, ModelMode, ModelPrice, Provider
from routing.selectors import (
    deployment_list,
    model_list,
    model_price_history,
    price_at,
    provider_health_summary,
)

CAPABILITIES = (
    ("tools", "Tools", "supports_tools"),
    ("vision", "Vision", "supports_vision"),
    ("json_schema", "JSON schema", "supports_json_schema"),
    ("reasoning", "Reasoning", "supports_reasoning"),
    ("prompt_caching", "Prompt caching", "supports_prompt_caching"),
)
PER_MILLION = Decimal(1_000_000)


def plain(value: Decimal) -> Decimal:
    """``value`` without trailing zeros and never in exponent form (10, not 1E+1)."""
    normal = value.normalize()
    return normal.quantize(Decimal(1)) if normal.as_tuple().exponent > 0 else normal  # type: ignore[operator]


def per_million(value: Decimal | None) -> Decimal | None:
    return None if value is None else plain(value * PER_MILLION)


class ModelsView(ConsoleOrgView):
    permission = VIEW_NODE
    section = "models"

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        provider = request.GET.get("provider", "")
        mode = request.GET.get("mode", "")
        if mode not in ModelMode.values:
            mode = ""
        qs = model_list(provider=provider or None, mode=mode or None)
        q = request.GET.get("q", "").strip()
        if q:
            qs = qs.filter(
                Q(canonical_id__icontains=q) | Q(display_name__icontains=q) | Q(family__icontains=q)
            )
        chosen = [c for c in request.GET.getlist("cap") if c in {k for k, _, _ in CAPABILITIES}]
        for key, _, field in CAPABILITIES:
            if key in chosen:
                qs = qs.filter(**{field: True})
        current = ModelPrice.objects.filter(
            model=OuterRef("pk"), effective_from__lte=timezone.now()
        ).order_by("-effective_from")
        qs = qs.annotate(
            input_price=Subquery(current.values("input_per_token")[:1]),
            output_price=Subquery(current.values("output_per_token")[:1]),
            deployment_count=Count("deployments", filter=Q(deployments__enabled=True)),
        )
        page = page_of(request, qs, per_page=50)
        rows = [
            {
                "m": m,
                "input": per_million(m.input_price),
                "output": per_million(m.output_price),
                "caps": [label for _, label, field in CAPABILITIES if getattr(m, field)],
            }
            for m in page.object_list
        ]
        return self.render(
            "console/models.html",
            {
                "page": page,
                "rows": rows,
                "q": q,
                "provider": provider,
                "mode": mode,
                "modes": ModelMode.choices,
                "providers": Provider.objects.order_by("name"),
                "capabilities": [(k, label, k in chosen) for k, label, _ in CAPABILITIES],
            },
        )


class ModelDetailView(ConsoleOrgView):
    permission = VIEW_NODE
    section = "models"

    def get(self, request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
        model = get_object_or_404(Model.objects.select_related("provider"), pk=pk)
        history = [
            {
                "price": p,
                "input": per_million(p.input_per_token),
                "output": per_million(p.output_per_token),
                "cached": per_million(p.cached_input_per_token),
            }
            for p in reversed(model_price_history(model.canonical_id))
        ]
        current = price_at(model.pk, timezone.now())
        deployments = list(deployment_list().filter(model=model))
        health = stats_for([d.pk for d in deployments])
        for d in deployments:
            d.health = health.get(d.pk)
        return self.render(
            "console/model.html",
            {
                "m": model,
                "history": history,
                "current": current,
                "deployments": deployments,
                "show_credentials": self.scope.can_at_root(MANAGE_CREDENTIALS),
                "caps": [(label, getattr(model, field)) for _, label, field in CAPABILITIES],
            },
        )


TRAFFIC_HOURS = 24


def traffic_by(view: ConsoleOrgView, dimension: str, **filters: Any) -> dict[Any, dict[str, Any]]:
    """This organization's traffic of the last 24 hours by ``dimension`` (``provider``), hour
    by hour: requests, average latency and the share that did not succeed, as sparklines.
    From the usage rollups and the failed-request counts (the usage page's figures); only for
    organization-wide billing viewers (None for the others)."""
    end = timezone.now().astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    end += dt.timedelta(hours=1)
    hours = [end - dt.timedelta(hours=TRAFFIC_HOURS - i) for i in range(TRAFFIC_HOURS)]
    query = analytics.AnalyticsQuery(
        start=hours[0],
        end=end,
        bucket="hour",
        group_by=(dimension,),
        time_zone="UTC",
        filters={k: [v] for k, v in filters.items()},
    )
    points = analytics.analytics_timeseries(
        scoped_rows(view, analytics.analytics_source(query), None), query
    )
    served = {(p[dimension], p["t"]): p for p in points}
    failed = analytics.failures_hourly(
        scoped_rows(view, FailedRequestCount, None), query, dimension
    )
    values = {key for key, _ in served} | {key for key, _ in failed}
    out: dict[Any, dict[str, Any]] = {}
    for value in values:
        latency: list[float | None] = []
        share: list[float | None] = []
        requests = failures = 0
        for hour in hours:
            p = served.get((value, hour))
            f = failed.get((value, hour), {"failed": 0, "charged": 0})
            n = p["requests"] if p else 0
            made = max(n + f["failed"] - f["charged"], f["failed"])
            requests, failures = requests + n, failures + f["failed"]
            latency.append(
                p["latency_ms_sum"] / p["latency_count"] if p and p["latency_count"] else None
            )
            share.append(f["failed"] / made * 100 if made else None)
        out[value] = {
            "requests": requests,
            "failed": failures,
            "latency": sparkline(latency),
            "errors": sparkline(share),
        }
    return out


class DeploymentsView(ConsoleOrgView):
    """The health routing uses, per provider (problems first, with this organization's last
    24 hours as sparklines) and per deployment; a deployment's page has the detail."""

    permission = VIEW_NODE
    section = "deployments"

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        qs = deployment_list()
        provider = request.GET.get("provider", "")
        if provider:
            qs = qs.filter(provider__slug=provider)
        state = request.GET.get("state", "")
        if state == "enabled":
            qs = qs.filter(enabled=True, provider__enabled=True)
        elif state == "disabled":
            qs = qs.filter(Q(enabled=False) | Q(provider__enabled=False))
        q = request.GET.get("q", "").strip()
        if q:
            qs = qs.filter(Q(name__icontains=q) | Q(model__canonical_id__icontains=q))
        page = page_of(request, qs, per_page=50)
        health = stats_for([d.pk for d in page.object_list])
        for d in page.object_list:
            d.health = health.get(d.pk)
        context: dict[str, Any] = {
            "page": page,
            "provider": provider,
            "state": state,
            "q": q,
            "providers": Provider.objects.filter(deployments__isnull=False)
            .distinct()
            .order_by("name"),
            "show_credentials": self.scope.can_at_root(MANAGE_CREDENTIALS),
            "summary": self._summary(),
            "can_traffic": self.scope.can_at_root(VIEW_BILLING),
        }
        return self.render("console/deployments.html", context)

    def _summary(self) -> list[dict[str, Any]]:
        ids = list(Deployment.objects.values_list("pk", flat=True))
        rows = provider_health_summary(stats_for(ids))
        if self.scope.can_at_root(VIEW_BILLING):
            traffic = traffic_by(self, "provider")
            for row in rows:
                row["traffic"] = traffic.get(row["slug"])
        return rows


class DeploymentView(ConsoleOrgView):
    """One deployment: where it points, its limits, the health and breaker state routing
    uses now, and this organization's last 24 hours on its model at its provider."""

    permission = VIEW_NODE
    section = "deployments"

    def get(self, request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
        deployment = get_object_or_404(deployment_list(), pk=pk)
        health = stats_for([deployment.pk]).get(deployment.pk)
        traffic = None
        if self.scope.can_at_root(VIEW_BILLING):
            by_model = traffic_by(self, "model", provider=deployment.provider.slug)
            traffic = by_model.get(deployment.model.canonical_id)
        siblings = list(deployment_list().filter(model=deployment.model).exclude(pk=pk))
        sibling_health = stats_for([d.pk for d in siblings])
        for d in siblings:
            d.health = sibling_health.get(d.pk)
        return self.render(
            "console/deployment.html",
            {
                "d": deployment,
                "h": health,
                "traffic": traffic,
                "can_traffic": self.scope.can_at_root(VIEW_BILLING),
                "deployments": siblings,
                "show_credentials": self.scope.can_at_root(MANAGE_CREDENTIALS),
            },
        )
