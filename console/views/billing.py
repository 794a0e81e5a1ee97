"""Budgets (every scope, spend against limit), balance and ledger with card checkouts ("Buy
credit"), usage, and budget-alert notifications. Reads through billing.selectors, writes
through billing.services, scoped exactly as billing's management API (budgets by node; the
rest organization-wide)."""

from __future__ import annotations

import csv
import zoneinfo
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect

from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.analytics import selectors as analytics
from billing.analytics.params import analytics_query_parse
from billing.errors import InvalidInput as BillingInvalidInput
from billing.models import (
    Budget,
    BudgetScope,
    Checkout,
    FailedRequestCount,
    LedgerKind,
    Notification,
    UsageRecord,
)
from billing.money import plain_decimal
from billing.reports.csv_export import COLUMNS, usage_csv_rows
from console.forms import BudgetCreateForm, BudgetUpdateForm, CheckoutForm, add_service_errors
from console.views.analytics import scoped_rows, spend_chart
from console.views.base import ConsoleOrgView, filtered, page_of
from orgs.errors import InvalidInput
from orgs.models import ApiKey, Membership, Node, NodeKind
from orgs.roles import MANAGE_BILLING, VIEW_BILLING

CENT = Decimal("0.01")
EM_SPACE = "\u2003"
NODE_SCOPES = {
    NodeKind.ORGANIZATION: BudgetScope.ORGANIZATION,
    NodeKind.DEPARTMENT: BudgetScope.DEPARTMENT,
    NodeKind.TEAM: BudgetScope.TEAM,
    NodeKind.PROJECT: BudgetScope.PROJECT,
}


def spend_bar(limit: Decimal, spent: Decimal, thresholds: list[int]) -> dict[str, Any]:
    """What the spend-vs-limit bar shows: percent used (capped at 100 for the fill), its level
    (ok / warn past the first threshold / over at 100 %), and the threshold ticks."""
    percent = (spent / limit * 100) if limit > 0 else (Decimal(100) if spent > 0 else Decimal(0))
    crossed = [t for t in thresholds if percent >= t]
    level = "over" if percent >= 100 else ("warn" if crossed else "ok")
    return {
        "percent": percent.quantize(Decimal("0.1")),
        "fill": min(percent, Decimal(100)).quantize(Decimal("0.1")),
        "level": level,
        "ticks": [t for t in thresholds if t < 100],
        "remaining": max(limit - spent, Decimal(0)),
    }


class _BillingBase(ConsoleOrgView):
    section = "billing"


class BudgetsView(_BillingBase):
    permission = VIEW_BILLING
    post_permission = MANAGE_BILLING
    section = "budgets"

    def targets(self) -> list[Any]:
        """Choices for a new budget: everything the caller may manage billing for."""
        if not self.scope.can(MANAGE_BILLING):
            return []
        allowed = self.scope.visible_ids(MANAGE_BILLING)
        nodes = Node.objects.filter(
            organization=self.organization, archived_at__isnull=True, id__in=allowed
        ).order_by("path")
        members = (
            Membership.objects.filter(
                organization=self.organization, removed_at__isnull=True, node_id__in=allowed
            )
            .select_related("user", "node")
            .order_by("user__username")
        )
        keys = ApiKey.objects.filter(
            organization=self.organization, revoked_at__isnull=True, project_id__in=allowed
        ).select_related("project")
        groups: list[Any] = [
            (
                "Organization and tree",
                [
                    (
                        f"{NODE_SCOPES[NodeKind(n.kind)]}:{n.pk}",
                        EM_SPACE * n.depth + f"{n.name} ({n.get_kind_display().lower()})",
                    )
                    for n in nodes
                ],
            ),
            (
                "Members",
                [(f"member:{m.pk}", f"{m.user.get_username()} in {m.node.name}") for m in members],
            ),
            ("API keys", [(f"key:{k.pk}", f"{k.name} ({k.project.name})") for k in keys]),
        ]
        if self.scope.can_at_root(MANAGE_BILLING):  # a tag spans the whole organization
            groups.append(("Request tags", [("tag:0", "Requests with the tag given below")]))
        return [g for g in groups if g[1]]

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        return self._page(BudgetCreateForm(targets=self.targets()))

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = BudgetCreateForm(request.POST, targets=self.targets())
        if form.is_valid():
            scope, _, raw_id = form.cleaned_data["target"].partition(":")
            try:
                scope_id, node = billing_services.budget_scope_node(
                    organization=self.organization, scope=scope, scope_id=int(raw_id)
                )
                self.scope.require(node, MANAGE_BILLING)
                billing_services.budget_create(
                    actor=self.scope.actor,
                    organization=self.organization,
                    scope=scope,
                    scope_id=scope_id,
                    period=form.cleaned_data["period"],
                    tag=form.cleaned_data["tag"] if scope == BudgetScope.TAG else "",
                    **form.budget_fields(),
                )
            except InvalidInput as exc:
                add_service_errors(form, exc, {"scope": "target", "scope_id": "target"})
            else:
                messages.success(request, "Budget created.")
                return redirect("console:budgets", org_slug=org_slug)
        return self._page(form, status=400)

    def _page(self, form: BudgetCreateForm, status: int = 200) -> HttpResponse:
        qs = (
            billing_selectors.budgets()
            .filter(
                organization=self.organization, node_id__in=self.scope.visible_ids(VIEW_BILLING)
            )
            .select_related("node")
            .order_by("node__path", "scope", "id")
        )
        scope_filter = self.request.GET.get("scope", "")
        qs = filtered(self.request, qs, {"scope": scope_filter}, billing_selectors.BUDGET_FILTERS)
        page = page_of(self.request, qs)
        budgets = list(page.object_list)
        current = billing_selectors.budgets_current_spend(budgets)
        member_ids = [b.scope_id for b in budgets if b.scope == BudgetScope.MEMBER]
        key_ids = [b.scope_id for b in budgets if b.scope == BudgetScope.KEY]
        members = {
            m.pk: m.user.get_username()
            for m in Membership.objects.filter(pk__in=member_ids).select_related("user")
        }
        keys = {k.pk: k.name for k in ApiKey.objects.filter(pk__in=key_ids)}
        manageable: set[int] = set()
        if self.scope.can(MANAGE_BILLING):
            manageable = self.scope.visible_id_set(MANAGE_BILLING)
        rows = []
        for b in budgets:
            start, spent = current[b.pk]
            if b.scope == BudgetScope.MEMBER:
                target = f"member {members.get(b.scope_id, b.scope_id)}"
            elif b.scope == BudgetScope.KEY:
                target = f"key {keys.get(b.scope_id, b.scope_id)}"
            elif b.scope == BudgetScope.TAG:
                target = f"requests tagged {b.tag}"
            else:
                target = b.node.name
            rows.append(
                {
                    "b": b,
                    "target": target,
                    "spent": spent,
                    "period_start": start,
                    "bar": spend_bar(b.limit_usd, spent, b.thresholds),
                    "can_manage": b.node_id in manageable,
                }
            )
        return self.render(
            "console/budgets.html",
            {
                "page": page,
                "rows": rows,
                "form": form,
                "scopes": BudgetScope.choices,
                "scope_filter": scope_filter,
            },
            status=status,
        )


class BudgetDetailView(_BillingBase):
    """POST ``/budgets/<pk>/update/`` or ``/budgets/<pk>/delete/``; GET shows the edit form."""

    permission = VIEW_BILLING
    post_permission = MANAGE_BILLING
    section = "budgets"

    def _budget(self, pk: int) -> Budget:
        return self.scoped_get(
            billing_selectors.budgets().select_related("node"),
            pk,
            node_field="node",
            perm=VIEW_BILLING,
        )

    def get(self, request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
        budget = self._budget(pk)
        form = BudgetUpdateForm(
            initial={
                "name": budget.name,
                "limit_usd": plain_decimal(budget.limit_usd),
                "mode": budget.mode,
                "thresholds": ", ".join(str(t) for t in budget.thresholds),
                "notify_emails": "\n".join(budget.notify_emails),
            }
        )
        return self._page(budget, form)

    def post(self, request: HttpRequest, org_slug: str, pk: int, action: str) -> HttpResponse:
        if action not in ("update", "delete"):
            raise Http404
        budget = self._budget(pk)
        self.scope.require(budget.node, MANAGE_BILLING)
        if action == "delete":
            billing_services.budget_delete(actor=self.scope.actor, budget=budget)
            messages.success(request, "Budget deleted.")
            return redirect("console:budgets", org_slug=org_slug)
        form = BudgetUpdateForm(request.POST)
        if form.is_valid():
            try:
                billing_services.budget_update(
                    actor=self.scope.actor, budget=budget, **form.budget_fields()
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, "Budget saved.")
                return redirect("console:budgets", org_slug=org_slug)
        return self._page(budget, form, status=400)

    def _page(self, budget: Budget, form: Any, status: int = 200) -> HttpResponse:
        start, spent = billing_selectors.budgets_current_spend([budget])[budget.pk]
        return self.render(
            "console/budget.html",
            {
                "b": budget,
                "form": form,
                "spent": spent,
                "period_start": start,
                "bar": spend_bar(budget.limit_usd, spent, budget.thresholds),
                "can_manage": self.scope.can_on(budget.node, MANAGE_BILLING),
                "alerts": budget.alerts.order_by("-id")[:20],
            },
            status=status,
        )


class BillingView(_BillingBase):
    """Balance, card purchases of credit (checkouts) and the append-only ledger
    (organization-wide, as the API). Nobody here can credit the balance: a checkout is paid
    at the payment provider, whose signed webhook credits it."""

    permission = VIEW_BILLING
    post_permission = MANAGE_BILLING
    at_root = True

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        return self._page(CheckoutForm())

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = CheckoutForm(request.POST)
        if form.is_valid():
            try:
                checkout = billing_services.checkout_create(
                    actor=self.scope.actor,
                    organization=self.organization,
                    amount=str(form.cleaned_data["amount"]),
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                url = billing_services.checkout_pay_url(checkout)
                if url:
                    return redirect(url)
                messages.warning(
                    request,
                    f"Checkout {checkout.public_id} created, but this installation has no "
                    "payment provider configured (BILLING_CHECKOUT_URL): ask its operator.",
                )
                return redirect("console:billing", org_slug=org_slug)
        return self._page(form, status=400)

    def _page(self, form: CheckoutForm, status: int = 200) -> HttpResponse:
        qs = billing_selectors.ledger_entries().filter(organization=self.organization)
        kind = self.request.GET.get("kind", "")
        qs = filtered(self.request, qs, {"kind": kind}, billing_selectors.LEDGER_FILTERS)
        checkouts = [
            {"c": c, "pay_url": billing_services.checkout_pay_url(c)}
            for c in Checkout.objects.filter(organization=self.organization)[:10]
        ]
        return self.render(
            "console/billing.html",
            {
                "summary": billing_selectors.balance_summary(organization=self.organization),
                "page": page_of(self.request, qs),
                "form": form,
                "checkouts": checkouts,
                "kinds": LedgerKind.choices,
                "kind": kind,
            },
            status=status,
        )


USAGE_PARAMS = ("from", "to", "days", "project", "model")
USAGE_DAYS = "30"  # the default period: the spend page's and the overview's too


class UsageView(_BillingBase):
    """Requests, tokens and cost over a period: per day, per model and per project (the
    analytics selectors the API and the spend page read), the records themselves, and the
    same CSV as a report's. Query parameters are the analytics API's (``from`` / ``to`` /
    ``days``, ``project``, ``model``), parsed by the same declaration; the last 30 days by
    default, like the spend page, which it links to for the money view."""

    permission = VIEW_BILLING
    at_root = True
    section = "usage"

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        params = {k: request.GET[k] for k in USAGE_PARAMS if request.GET.get(k)}
        errors: dict[str, str] = {}
        try:
            query = analytics_query_parse({"days": USAGE_DAYS, **params}, time_zone=self._zone)
        except BillingInvalidInput as exc:
            errors = {name: " ".join(texts) for name, texts in exc.errors.items()}
            query = analytics_query_parse({"days": USAGE_DAYS}, time_zone=self._zone)
        records = analytics.analytics_records(scoped_rows(self, UsageRecord, None), query)
        if request.GET.get("format") == "csv":
            return self._csv(records, query)
        return self.render(
            "console/usage.html",
            {**self._figures(query), **self._period(query, params), "errors": errors,
             "page": page_of(self.request, records.order_by("-created_at"))},
            status=400 if errors else 200,
        )  # fmt: skip

    @property
    def _zone(self) -> str:
        return self.organization.time_zone

    def _figures(self, query: analytics.AnalyticsQuery) -> dict[str, Any]:
        def rows(q: analytics.AnalyticsQuery) -> Any:
            return scoped_rows(self, analytics.analytics_source(q), None)

        totals = analytics.analytics_totals(rows(query), query)
        series = replace(query, bucket="day")
        points = analytics.analytics_timeseries(rows(series), series)
        days = analytics.period_days(query)
        by_model = replace(query, group_by=("model",))
        by_project = replace(query, group_by=("project",))
        projects = analytics.analytics_breakdown(rows(by_project), by_project, limit=20)
        names = analytics.dimension_labels(self.organization.pk, projects, ("project",))
        for row in projects:
            row["name"] = names.get("project", {}).get(row["project"], "—")
        return {
            "totals": totals,
            "failures": self._failures(query, totals["requests"]),
            "chart": spend_chart(points, days, zoneinfo.ZoneInfo(query.time_zone)),
            "by_model": analytics.analytics_breakdown(rows(by_model), by_model, limit=20),
            "by_project": projects,
            "first_day": days[0],
            "last_day": days[-1],
        }

    def _failures(self, query: analytics.AnalyticsQuery, requests: int) -> dict[str, Any]:
        """Requests that did not succeed (billing.failures), by status and code and per key,
        model and provider: the analytics API's ``failures`` figures."""
        failed = scoped_rows(self, FailedRequestCount, None)
        totals = analytics.failures_totals(failed, query)
        out: dict[str, Any] = {
            "totals": totals,
            "share": analytics.failure_share(requests, totals),
            "by_code": analytics.failures_breakdown(
                failed, replace(query, group_by=("status", "code")), limit=20
            ),
        }
        for dimension in ("key", "model", "provider"):
            rows = analytics.failures_breakdown(
                failed, replace(query, group_by=(dimension, "status")), limit=10
            )
            labels = analytics.dimension_labels(self.organization.pk, rows, (dimension,))
            for row in rows:
                value = row[dimension]
                row["label"] = labels.get(dimension, {}).get(value, value) or "—"
            out[f"by_{dimension}"] = rows
        return out

    def _period(self, query: analytics.AnalyticsQuery, params: dict[str, str]) -> dict[str, Any]:
        csv_params = {**params, "format": "csv"}
        return {
            "params": params,
            "projects": Node.objects.filter(
                organization=self.organization, kind=NodeKind.PROJECT
            ).order_by("name"),
            "csv_query": urlencode(csv_params),
        }

    def _csv(self, records: Any, query: analytics.AnalyticsQuery) -> StreamingHttpResponse:
        class Echo:
            def write(self, value: str) -> str:
                return value

        writer = csv.writer(Echo())

        def lines() -> Iterator[str]:
            yield writer.writerow(COLUMNS)
            for row in usage_csv_rows(records):
                yield writer.writerow(row)

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        days = analytics.period_days(query)
        name = f"usage-{self.organization.slug}-{days[0]:%Y%m%d}-{days[-1]:%Y%m%d}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


class NotificationsView(_BillingBase):
    """Budget alerts and other console notifications, newest first."""

    permission = VIEW_BILLING
    at_root = True
    section = "notifications"

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        qs = Notification.objects.filter(organization=self.organization).select_related("budget")
        return self.render("console/notifications.html", {"page": page_of(request, qs)})
