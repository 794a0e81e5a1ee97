"""Budgets (every scope, spend against limit), balance and ledger with top-ups, usage, and
budget-alert notifications. Reads through billing.selectors, writes through billing.services,
scoped exactly as billing's management API (budgets by node; the rest organization-wide)."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.utils import timezone

from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.models import Budget, BudgetScope, LedgerKind, Notification
from console.forms import BudgetCreateForm, BudgetUpdateForm, TopupForm, add_service_errors
from console.views.base import ConsoleOrgView, page_of
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
        if scope_filter in BudgetScope.values:
            qs = qs.filter(scope=scope_filter)
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
                "limit_usd": budget.limit_usd.normalize(),
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
    """Balance, top-ups and the append-only ledger (organization-wide, as the API)."""

    permission = VIEW_BILLING
    post_permission = MANAGE_BILLING
    at_root = True

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        return self._page(TopupForm())

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = TopupForm(request.POST)
        if form.is_valid():
            try:
                entry = billing_services.balance_topup(
                    actor=self.scope.actor,
                    organization=self.organization,
                    amount=form.cleaned_data["amount"],
                    reference=form.cleaned_data["reference"],
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(
                    request,
                    f"Top-up of ${entry.amount.quantize(CENT)} recorded; "
                    f"balance ${entry.balance_after.quantize(CENT)}.",
                )
                return redirect("console:billing", org_slug=org_slug)
        return self._page(form, status=400)

    def _page(self, form: TopupForm, status: int = 200) -> HttpResponse:
        qs = billing_selectors.ledger_entries().filter(organization=self.organization)
        kind = self.request.GET.get("kind", "")
        if kind in LedgerKind.values:
            qs = qs.filter(kind=kind)
        return self.render(
            "console/billing.html",
            {
                "summary": billing_selectors.balance_summary(organization=self.organization),
                "page": page_of(self.request, qs),
                "form": form,
                "kinds": LedgerKind.choices,
                "kind": kind,
            },
            status=status,
        )


def _day(raw: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        return None


class UsageView(_BillingBase):
    """Requests, tokens and cost over a date range: per day (a server-made SVG chart), per
    model and per project, the records themselves, and a CSV download of them."""

    permission = VIEW_BILLING
    at_root = True
    section = "usage"
    CSV_COLUMNS = (
        "created_at",
        "request_id",
        "project_id",
        "key_id",
        "member_id",
        "requested_model",
        "model",
        "provider",
        "deployment",
        "tokens_in",
        "tokens_out",
        "tokens_cached",
        "cost",
        "latency_ms",
        "status",
        "attempts",
    )

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        today = timezone.now().date()
        until = _day(request.GET.get("until", "")) or today
        since = _day(request.GET.get("since", "")) or (until - dt.timedelta(days=13))
        if since > until:
            since, until = until, since
        start = dt.datetime.combine(since, dt.time.min, tzinfo=dt.UTC)
        end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
        qs = billing_selectors.usage_records().filter(
            organization=self.organization, created_at__gte=start, created_at__lt=end
        )
        project = request.GET.get("project", "")
        if project.isdigit():
            qs = qs.filter(project_id=int(project))
        model = request.GET.get("model", "")
        if model:
            qs = qs.filter(model=model)
        if request.GET.get("format") == "csv":
            return self._csv(qs, since, until)
        totals = qs.aggregate(
            requests=Count("id"),
            tokens_in=Sum("tokens_in"),
            tokens_out=Sum("tokens_out"),
            cost=Sum("cost"),
            errors=Count("id", filter=~Q(status="ok") & ~Q(status="")),
        )
        per_day = {
            row["day"]: row
            for row in qs.annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
            .values("day")
            .annotate(requests=Count("id"), cost=Sum("cost"))
            .order_by("day")
        }
        days = []
        day = since
        while day <= until:
            row = per_day.get(day, {})
            days.append(
                {"day": day, "requests": row.get("requests", 0), "cost": row.get("cost") or 0}
            )
            day += dt.timedelta(days=1)
        by_model = list(
            qs.values("model", "provider")
            .annotate(
                requests=Count("id"), tokens=Sum("tokens_in") + Sum("tokens_out"), cost=Sum("cost")
            )
            .order_by("-cost", "model")[:20]
        )
        by_project = list(
            qs.values("project_id")
            .annotate(requests=Count("id"), cost=Sum("cost"))
            .order_by("-cost")[:20]
        )
        names = dict(
            Node.objects.filter(
                organization=self.organization, pk__in=[r["project_id"] for r in by_project]
            ).values_list("pk", "name")
        )
        for row in by_project:
            row["name"] = names.get(row["project_id"], "—")
        projects = Node.objects.filter(
            organization=self.organization, kind=NodeKind.PROJECT
        ).order_by("name")
        return self.render(
            "console/usage.html",
            {
                "since": since,
                "until": until,
                "project": project,
                "model": model,
                "projects": projects,
                "totals": totals,
                "chart": bar_chart(days),
                "days": days,
                "by_model": by_model,
                "by_project": by_project,
                "page": page_of(self.request, qs.order_by("-created_at")),
                "csv_query": self._csv_query(since, until, project, model),
            },
        )

    @staticmethod
    def _csv_query(since: dt.date, until: dt.date, project: str, model: str) -> str:
        from urllib.parse import urlencode

        params = {"since": since.isoformat(), "until": until.isoformat(), "format": "csv"}
        if project:
            params["project"] = project
        if model:
            params["model"] = model
        return urlencode(params)

    def _csv(self, qs: Any, since: dt.date, until: dt.date) -> StreamingHttpResponse:
        class Echo:
            def write(self, value: str) -> str:
                return value

        writer = csv.writer(Echo())
        columns = self.CSV_COLUMNS

        def rows() -> Iterator[str]:
            yield writer.writerow(columns)
            for record in qs.order_by("created_at", "id").iterator(chunk_size=2000):
                values = []
                for name in columns:
                    value = getattr(record, name)
                    values.append(value.isoformat() if isinstance(value, dt.datetime) else value)
                yield writer.writerow(["" if v is None else v for v in values])

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        name = f"usage-{self.organization.slug}-{since:%Y%m%d}-{until:%Y%m%d}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


def bar_chart(days: list[dict[str, Any]], *, width: int = 720, height: int = 180) -> dict[str, Any]:
    """Geometry of a per-day cost bar chart, drawn as inline SVG by the template (no JS)."""
    top = max((Decimal(d["cost"]) for d in days), default=Decimal(0))
    n = max(len(days), 1)
    slot = width / n
    bar = max(slot * 0.7, 1.0)
    bars = []
    for i, d in enumerate(days):
        cost = Decimal(d["cost"])
        h = float(cost / top * (height - 20)) if top > 0 else 0.0
        bars.append(
            {
                "x": round(i * slot + (slot - bar) / 2, 2),
                "y": round(height - h, 2),
                "w": round(bar, 2),
                "h": round(h, 2),
                "day": d["day"],
                "cost": cost,
                "requests": d["requests"],
                "label": i % max(n // 7, 1) == 0,
                "lx": round(i * slot + slot / 2, 2),
            }
        )
    return {"width": width, "height": height, "bars": bars, "max": top}


class NotificationsView(_BillingBase):
    """Budget alerts and other console notifications, newest first."""

    permission = VIEW_BILLING
    at_root = True
    section = "notifications"

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        qs = Notification.objects.filter(organization=self.organization).select_related("budget")
        return self.render("console/notifications.html", {"page": page_of(request, qs)})
