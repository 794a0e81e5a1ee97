"""Gateway API keys: list, create (the secret is shown once), limits, rotate, revoke."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.db.models import Count, Max, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone

from billing.models import BudgetScope
from billing.periods import period_start
from billing.selectors import budgets as billing_budgets
from billing.selectors import budgets_current_spend, usage_records
from console.forms import ApiKeyCreateForm, ApiKeyRotateForm, ApiKeyUpdateForm, add_service_errors
from console.views.base import ConsoleOrgView, filtered, page_of
from orgs import services
from orgs.errors import InvalidInput
from orgs.models import ApiKey, Node, NodeKind
from orgs.roles import CREATE_KEYS, MANAGE_KEYS, VIEW_BILLING, VIEW_KEYS
from orgs.selectors import KEY_FILTERS, KEY_SEARCH


def key_status(api_key: ApiKey, now: dt.datetime) -> str:
    if api_key.revoked_at is not None:
        return "revoked"
    if api_key.expires_at is not None and api_key.expires_at <= now:
        return "expired"
    return "active"


SORTS = {
    "": "newest first",
    "name": "name",
    "spend": "spend this month, highest first",
    "last_used": "last used, latest first",
}


def key_figures(organization: Any, key_ids: list[int], now: dt.datetime) -> dict[int, dict]:
    """Per key of ``organization``: spend and requests this calendar month (its time zone),
    last use (its latest usage record) and its key budget's current use. Three queries."""
    figures: dict[int, dict] = {
        pk: {"spend": Decimal(0), "requests": 0, "last_used": None, "budget": None}
        for pk in key_ids
    }
    if not key_ids:
        return figures
    month = period_start("monthly", now, organization.time_zone)
    records = usage_records().filter(organization_id=organization.pk, key_id__in=key_ids)
    for row in (
        records.values("key_id")
        .annotate(
            last=Max("created_at"),
            spend=Sum("cost", filter=Q(created_at__gte=month)),
            requests=Count("id", filter=Q(created_at__gte=month)),
        )
        .order_by()
    ):
        entry = figures[row["key_id"]]
        entry.update(spend=row["spend"] or Decimal(0), requests=row["requests"] or 0)
        entry["last_used"] = row["last"]
    budgets = list(
        billing_budgets().filter(
            organization=organization, scope=BudgetScope.KEY, scope_id__in=key_ids
        )
    )
    spent = budgets_current_spend(budgets, now=now)
    for budget in budgets:
        used = spent[budget.pk][1]
        percent = (used / budget.limit_usd * 100) if budget.limit_usd else Decimal(0)
        figures[budget.scope_id]["budget"] = {
            "budget": budget,
            "spent": used,
            "percent": percent.quantize(Decimal("0.1")),
        }
    return figures


class _KeyBase(ConsoleOrgView):
    section = "keys"

    def projects(self) -> Any:
        return Node.objects.filter(
            organization=self.organization,
            kind=NodeKind.PROJECT,
            archived_at__isnull=True,
            id__in=self.scope.visible_ids(CREATE_KEYS),
        )

    def may_manage(self, api_key: ApiKey) -> bool:
        """Whether to offer the key's forms: owners and admins of its project, or the
        developer who created it. (``orgs.services`` enforces the same rule on submit.)"""
        if api_key.revoked_at is not None:
            return False
        project = api_key.project
        if self.scope.can_on(project, MANAGE_KEYS):
            return True
        return api_key.membership.user_id == self.request.user.pk and self.scope.can_on(
            project, CREATE_KEYS
        )

    def secret_page(self, api_key: ApiKey, raw_key: str, *, rotated: bool) -> HttpResponse:
        response = self.render(
            "console/key_secret.html",
            {
                "key": api_key,
                "raw_key": raw_key,
                "rotated": rotated,
                "base_url": self.request.build_absolute_uri("/v1"),
            },
        )
        # The secret must not be kept by the browser's or a proxy's cache.
        response["Cache-Control"] = "no-store"
        return response


class KeysView(_KeyBase):
    permission = VIEW_KEYS

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        qs = (
            ApiKey.objects.filter(
                organization=self.organization, project_id__in=self.scope.visible_ids(VIEW_KEYS)
            )
            .select_related("project", "membership__user")
            .order_by("-id")
        )
        status = request.GET.get("status", "active")
        if status not in ("active", "revoked"):
            status = "all"
        params = {
            "q": request.GET.get("q", "").strip(),
            "project": request.GET.get("project", ""),
            "revoked": {"active": "false", "revoked": "true"}.get(status, ""),
        }
        qs = filtered(request, qs, params, KEY_FILTERS, KEY_SEARCH)
        now = timezone.now()
        # spend, last use and budgets are billing figures: for billing viewers only
        money = self.scope.can(VIEW_BILLING)
        sort = request.GET.get("sort", "")
        sort = sort if sort in SORTS and (money or sort in ("", "name")) else ""
        if sort == "name":
            qs = qs.order_by("name", "id")
        figures: dict[int, dict] = {}
        if money and sort in ("spend", "last_used"):
            keys = list(qs)
            figures = key_figures(self.organization, [k.pk for k in keys], now)
            far = dt.datetime.min.replace(tzinfo=dt.UTC)
            if sort == "spend":
                keys.sort(key=lambda k: (-figures[k.pk]["spend"], -k.pk))
            else:
                keys.sort(key=lambda k: (figures[k.pk]["last_used"] or far, k.pk), reverse=True)
            page = page_of(request, keys)
        else:
            page = page_of(request, qs)
            if money:
                figures = key_figures(self.organization, [k.pk for k in page.object_list], now)
        billing_ids = self.scope.visible_id_set(VIEW_BILLING) if money else set()
        rows = [
            {
                "key": k,
                "status": key_status(k, now),
                "figures": figures.get(k.pk) if k.project_id in billing_ids else None,
            }
            for k in page.object_list
        ]
        projects = Node.objects.filter(
            organization=self.organization,
            kind=NodeKind.PROJECT,
            id__in=self.scope.visible_ids(VIEW_KEYS),
        ).order_by("name")
        return self.render(
            "console/keys.html",
            {
                "page": page,
                "rows": rows,
                "q": params["q"],
                "status": status,
                "project": params["project"],
                "projects": projects,
                "can_create": self.scope.can(CREATE_KEYS),
                "money": money,
                "sort": sort,
                "sorts": {k: v for k, v in SORTS.items() if money or k in ("", "name")},
            },
        )


class KeyCreateView(_KeyBase):
    permission = CREATE_KEYS
    post_permission = CREATE_KEYS

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        initial = {}
        if request.GET.get("project", "").isdigit():
            initial["project"] = int(request.GET["project"])
        form = ApiKeyCreateForm(projects=self.projects(), initial=initial)
        return self.render("console/key_new.html", {"form": form})

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = ApiKeyCreateForm(request.POST, projects=self.projects())
        if form.is_valid():
            project = form.cleaned_data["project"]
            self.scope.require(project, CREATE_KEYS)
            try:
                created = services.api_key_create(
                    actor=self.scope.actor, project=project, **form.service_fields()
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                return self.secret_page(created.api_key, created.raw_key, rotated=False)
        return self.render("console/key_new.html", {"form": form}, status=400)


class KeyDetailView(_KeyBase):
    """One key; POST ``/keys/<pk>/<action>/`` with action update, rotate or revoke."""

    permission = VIEW_KEYS
    post_permission = CREATE_KEYS
    actions = ("update", "rotate", "revoke")

    def _key(self, pk: int) -> ApiKey:
        return self.scoped_get(
            ApiKey.objects.select_related("project", "membership__user"),
            pk,
            node_field="project",
            perm=VIEW_KEYS,
        )

    def get(self, request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
        return self._page(self._key(pk))

    def post(self, request: HttpRequest, org_slug: str, pk: int, action: str) -> HttpResponse:
        if action not in self.actions:
            raise Http404
        api_key = self._key(pk)
        self.scope.require(api_key.project, CREATE_KEYS)
        actor = self.scope.actor
        if action == "update":
            form = ApiKeyUpdateForm(request.POST)
            if form.is_valid():
                try:
                    services.api_key_update(actor=actor, api_key=api_key, **form.service_fields())
                except InvalidInput as exc:
                    add_service_errors(form, exc)
                else:
                    messages.success(request, f"Saved {api_key.name}.")
                    return redirect("console:key", org_slug=org_slug, pk=api_key.pk)
            return self._page(api_key, status=400, update_form=form)
        if action == "rotate":
            form = ApiKeyRotateForm(request.POST)
            if form.is_valid():
                try:
                    created = services.api_key_rotate(
                        actor=actor,
                        api_key=api_key,
                        grace=dt.timedelta(hours=form.cleaned_data["grace_hours"]),
                    )
                except InvalidInput as exc:
                    add_service_errors(form, exc, {"grace_seconds": "grace_hours"})
                else:
                    return self.secret_page(created.api_key, created.raw_key, rotated=True)
            return self._page(api_key, status=400, rotate_form=form)
        try:
            services.api_key_revoke(actor=actor, api_key=api_key)
        except InvalidInput as exc:
            for errors in exc.errors.values():
                for message in errors:
                    messages.error(request, message)
        else:
            messages.success(request, f"Revoked {api_key.name}. It stops working within seconds.")
        return redirect("console:key", org_slug=org_slug, pk=api_key.pk)

    def _page(self, api_key: ApiKey, status: int = 200, **forms: Any) -> HttpResponse:
        may_manage = self.may_manage(api_key)
        context: dict[str, Any] = {
            "key": api_key,
            "status": key_status(api_key, timezone.now()),
            "secrets": api_key.secrets.all(),
            "may_manage": may_manage,
            "now": timezone.now(),
        }
        if may_manage:
            context["update_form"] = forms.get("update_form") or ApiKeyUpdateForm(
                initial={
                    "name": api_key.name,
                    "allowed_models": "\n".join(api_key.allowed_models),
                    "ip_allowlist": "\n".join(api_key.ip_allowlist),
                    "rpm_limit": api_key.rpm_limit,
                    "tpm_limit": api_key.tpm_limit,
                    "expires_at": api_key.expires_at,
                }
            )
            context["rotate_form"] = forms.get("rotate_form") or ApiKeyRotateForm()
        return self.render("console/key.html", context, status=status)
