"""The organization's overview, settings, and its tree (departments, teams, projects)."""

from __future__ import annotations

import zoneinfo
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect

from billing.analytics import selectors as analytics
from billing.analytics.params import analytics_query_parse
from billing.models import FailedRequestCount, Notification
from billing.selectors import balance_summary
from console.audit_text import audit_lines
from console.forms import (
    NodeArchiveForm,
    NodeCreateForm,
    NodeMoveForm,
    NodeRenameForm,
    OrganizationArchiveForm,
    OrganizationMfaForm,
    OrganizationUpdateForm,
    add_service_errors,
)
from console.views.analytics import scoped_rows, spend_chart
from console.views.base import ConsoleOrgView
from orgs import services
from orgs.errors import InvalidInput
from orgs.mfa import mfa_enabled
from orgs.models import PARENT_KIND, ApiKey, AuditEvent, Membership, Node, NodeKind
from orgs.roles import MANAGE_NODE, VIEW_AUDIT, VIEW_BILLING, VIEW_KEYS, VIEW_MEMBERS, VIEW_NODE
from orgs.selectors import is_owner_over, root_node

CHILD_KIND = {parent: child for child, parent in PARENT_KIND.items()}
OVERVIEW_DAYS = 30  # the money section's period
RUNWAY_DAYS = 7  # the burn rate is the average daily spend over the last this many days
TOP = 5


def money_overview(view: ConsoleOrgView) -> dict[str, Any]:
    """The overview's money section (organization-wide billing viewers): balance and its
    runway at the last week's burn rate, spend and savings over the last 30 days with the daily
    chart, requests and error rate, the top keys, models and projects, unread alerts. Every
    figure from the selectors the spend page and the API read."""
    org = view.organization
    query = analytics_query_parse({"days": OVERVIEW_DAYS}, time_zone=org.time_zone)
    source = analytics.analytics_source(query)
    rows = scoped_rows(view, source, None)
    totals = analytics.analytics_totals(rows, query)
    week = analytics_query_parse({"days": RUNWAY_DAYS}, time_zone=org.time_zone)
    burn = analytics.analytics_totals(
        scoped_rows(view, analytics.analytics_source(week), None), week
    )
    daily = burn["cost"] / RUNWAY_DAYS
    balance = balance_summary(organization=org)
    runway = (balance["available"] / daily).quantize(Decimal("0.1")) if daily > 0 else None
    series_query = analytics.AnalyticsQuery(
        start=query.start, end=query.end, bucket="day", time_zone=query.time_zone
    )
    points = analytics.analytics_timeseries(
        scoped_rows(view, analytics.analytics_source(series_query), None), series_query
    )
    top: list[tuple[str, str, list[dict[str, Any]]]] = []
    for dimension, title in (("key", "keys"), ("model", "models"), ("project", "projects")):
        grouped = analytics.AnalyticsQuery(
            start=query.start, end=query.end, group_by=(dimension,), time_zone=query.time_zone
        )
        found = analytics.analytics_breakdown(
            scoped_rows(view, analytics.analytics_source(grouped), None), grouped, limit=TOP
        )
        labels = analytics.dimension_labels(org.pk, found, (dimension,)).get(dimension, {})
        for row in found:
            row["label"] = labels.get(row[dimension], row[dimension]) or "—"
        top.append((dimension, title, found))
    failures = analytics.failures_totals(scoped_rows(view, FailedRequestCount, None), query)
    return {
        "days": OVERVIEW_DAYS,
        "totals": totals,
        "failures": failures,
        "error_rate": analytics.failure_share(totals["requests"], failures),
        "balance": balance,
        "burn_per_day": daily,
        "runway_days": runway,
        "chart": spend_chart(
            points, analytics.period_days(query), zoneinfo.ZoneInfo(query.time_zone)
        ),
        "top": top,
        "alerts": Notification.objects.filter(organization=org, read_at__isnull=True).count(),
    }


class OverviewView(ConsoleOrgView):
    permission = VIEW_NODE
    section = "overview"

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        request.session["console_org"] = self.organization.slug
        nodes = Node.objects.filter(
            organization=self.organization,
            archived_at__isnull=True,
            id__in=self.scope.visible_ids(VIEW_NODE),
        )
        kinds = dict(nodes.values_list("kind").annotate(n=Count("id")))
        my_roles = (
            Membership.objects.filter(
                organization=self.organization, user=request.user, removed_at__isnull=True
            )
            .select_related("node")
            .order_by("node__path")
        )
        counts: dict[str, Any] = {
            "departments": kinds.get(NodeKind.DEPARTMENT, 0),
            "teams": kinds.get(NodeKind.TEAM, 0),
            "projects": kinds.get(NodeKind.PROJECT, 0),
        }
        if self.scope.can(VIEW_MEMBERS):
            counts["members"] = (
                Membership.objects.filter(
                    organization=self.organization,
                    removed_at__isnull=True,
                    node_id__in=self.scope.visible_ids(VIEW_MEMBERS),
                )
                .values("user_id")
                .distinct()
                .count()
            )
        if self.scope.can(VIEW_KEYS):
            counts["keys"] = ApiKey.objects.filter(
                organization=self.organization,
                revoked_at__isnull=True,
                project_id__in=self.scope.visible_ids(VIEW_KEYS),
            ).count()
        recent = None
        if self.scope.can_at_root(VIEW_AUDIT):
            recent = audit_lines(
                self.organization, AuditEvent.objects.filter(organization=self.organization)[:8]
            )
        money = money_overview(self) if self.scope.can_at_root(VIEW_BILLING) else None
        return self.render(
            "console/overview.html",
            {"counts": counts, "my_roles": my_roles, "recent": recent, "money": money},
        )


class SettingsView(ConsoleOrgView):
    permission = VIEW_NODE
    post_permission = MANAGE_NODE
    at_root = False
    section = "settings"

    def _form(self, data: Any = None) -> OrganizationUpdateForm:
        org = self.organization
        return OrganizationUpdateForm(data, initial={"name": org.name, "time_zone": org.time_zone})

    def _page(
        self, form: Any, archive_form: Any = None, mfa_form: Any = None, status: int = 200
    ) -> HttpResponse:
        is_owner = is_owner_over(user_id=self.request.user.pk, node=root_node(self.organization))
        return self.render(
            "console/settings.html",
            {
                "form": form,
                "is_owner": is_owner,
                "archive_form": archive_form or OrganizationArchiveForm(),
                "mfa_form": mfa_form
                or OrganizationMfaForm(initial={"require_mfa": self.organization.require_mfa}),
                "own_mfa": mfa_enabled(self.request.user),
            },
            status=status,
        )

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        return self._page(self._form())

    def post(self, request: HttpRequest, org_slug: str, action: str = "") -> HttpResponse:
        self.scope.require(None, MANAGE_NODE)  # organization-wide, as the API
        if action == "archive":
            return self._archive()
        if action == "mfa":
            return self._mfa()
        if action:
            raise Http404
        form = self._form(request.POST)
        if form.is_valid():
            try:
                services.organization_update(
                    actor=self.scope.actor,
                    organization=self.organization,
                    name=form.cleaned_data["name"],
                    time_zone=form.cleaned_data["time_zone"],
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, "Organization settings saved.")
                return redirect("console:settings", org_slug=self.organization.slug)
        return self._page(form, status=400)

    def _mfa(self) -> HttpResponse:
        """Owners only (``orgs.services.organization_mfa_require`` refuses anyone else: 403)."""
        form = OrganizationMfaForm(self.request.POST)
        if form.is_valid():
            required = form.cleaned_data["require_mfa"]
            try:
                services.organization_mfa_require(
                    actor=self.scope.actor, organization=self.organization, required=required
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                text = "now requires" if required else "no longer requires"
                messages.success(
                    self.request,
                    f"{self.organization.name} {text} multi-factor authentication.",
                )
                return redirect("console:settings", org_slug=self.organization.slug)
        return self._page(self._form(), mfa_form=form, status=400)

    def _archive(self) -> HttpResponse:
        """Owners only (``orgs.services.organization_archive`` refuses anyone else: 403)."""
        form = OrganizationArchiveForm(self.request.POST)
        if form.is_valid():
            try:
                revoked = services.organization_archive(
                    actor=self.scope.actor,
                    organization=self.organization,
                    revoke_keys=form.cleaned_data["revoke_keys"],
                )
            except InvalidInput as exc:
                add_service_errors(form, exc, {"organization": "__all__"})
            else:
                note = f" and {revoked} API key(s) revoked" if revoked else ""
                messages.success(self.request, f"{self.organization.name} archived{note}.")
                self.request.session.pop("console_org", None)
                return redirect("console:org-list")
        return self._page(self._form(), archive_form=form, status=400)


class TreeView(ConsoleOrgView):
    """Every node the caller may see, as an indented tree, and the form to add one."""

    permission = VIEW_NODE
    post_permission = MANAGE_NODE
    section = "tree"

    def _parents(self) -> Any:
        return Node.objects.filter(
            organization=self.organization,
            archived_at__isnull=True,
            id__in=self.scope.visible_ids(MANAGE_NODE),
        ).exclude(kind=NodeKind.PROJECT)

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        initial = {}
        if request.GET.get("parent", "").isdigit():
            initial["parent"] = int(request.GET["parent"])
        form = NodeCreateForm(parents=self._parents(), initial=initial)
        return self._page(form)

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = NodeCreateForm(request.POST, parents=self._parents())
        if form.is_valid():
            parent = form.cleaned_data["parent"]
            self.scope.require(parent, MANAGE_NODE)
            try:
                node = services.node_create(
                    actor=self.scope.actor,
                    parent=parent,
                    name=form.cleaned_data["name"],
                    slug=form.cleaned_data["slug"],
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(
                    request, f"{node.get_kind_display()} {node.name} created in {parent.name}."
                )
                return redirect("console:tree", org_slug=self.organization.slug)
        return self._page(form, status=400)

    def _page(self, form: NodeCreateForm, status: int = 200) -> HttpResponse:
        show_archived = self.request.GET.get("archived") == "1"
        nodes = Node.objects.filter(
            organization=self.organization, id__in=self.scope.visible_ids(VIEW_NODE)
        ).annotate(
            members=Count("memberships", filter=Q(memberships__removed_at__isnull=True)),
            keys=Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True)),
        )
        if not show_archived:
            nodes = nodes.filter(archived_at__isnull=True)
        manageable: set[int] = set()
        if self.scope.can(MANAGE_NODE):
            manageable = self.scope.visible_id_set(MANAGE_NODE)
        rows = [
            {
                "node": node,
                "indent": node.depth,
                "child_kind": CHILD_KIND.get(NodeKind(node.kind)),
                "can_add": node.pk in manageable
                and node.archived_at is None
                and node.kind != NodeKind.PROJECT,
            }
            for node in nodes.order_by("path")
        ]
        return self.render(
            "console/tree.html",
            {"rows": rows, "form": form, "show_archived": show_archived},
            status=status,
        )


class NodeDetailView(ConsoleOrgView):
    """One node: its place, children, members and keys, and (for managers) rename, move and
    archive. POST ``/nodes/<pk>/<action>/`` with action rename, move or archive."""

    permission = VIEW_NODE
    post_permission = MANAGE_NODE
    section = "tree"
    actions = ("rename", "move", "archive")

    def _node(self, pk: int) -> Node:
        return self.scoped_get(Node.objects.all(), pk, node_field="pk", perm=VIEW_NODE)

    def _move_parents(self, node: Node) -> Any:
        if node.parent_id is None:
            return Node.objects.none()
        return Node.objects.filter(
            organization=self.organization,
            kind=PARENT_KIND[NodeKind(node.kind)],
            archived_at__isnull=True,
            id__in=self.scope.visible_ids(MANAGE_NODE),
        )

    def get(self, request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
        node = self._node(pk)
        return self._page(node)

    def post(self, request: HttpRequest, org_slug: str, pk: int, action: str) -> HttpResponse:
        if action not in self.actions:
            raise Http404
        node = self._node(pk)
        self.scope.require(node, MANAGE_NODE)
        forms: dict[str, Any] = {}
        try:
            if action == "rename":
                form = forms["rename_form"] = NodeRenameForm(request.POST)
                if form.is_valid():
                    services.node_update(actor=self.scope.actor, node=node, **form.cleaned_data)
                    messages.success(request, f"Saved {node.name}.")
                    return redirect("console:node", org_slug=org_slug, pk=node.pk)
            elif action == "move":
                form = forms["move_form"] = NodeMoveForm(
                    request.POST, parents=self._move_parents(node)
                )
                if form.is_valid():
                    new_parent = form.cleaned_data["parent"]
                    self.scope.require(new_parent, MANAGE_NODE)
                    services.node_move(actor=self.scope.actor, node=node, new_parent=new_parent)
                    messages.success(request, f"Moved {node.name} under {new_parent.name}.")
                    return redirect("console:node", org_slug=org_slug, pk=node.pk)
            else:
                form = forms["archive_form"] = NodeArchiveForm(request.POST)
                if form.is_valid():
                    revoked = services.node_archive(
                        actor=self.scope.actor,
                        node=node,
                        revoke_keys=form.cleaned_data["revoke_keys"],
                    )
                    note = f" and revoked {revoked} API key(s)" if revoked else ""
                    messages.success(request, f"Archived {node.name} with its subtree{note}.")
                    return redirect("console:tree", org_slug=org_slug)
        except InvalidInput as exc:
            add_service_errors(form, exc, {"node": "__all__", "parent": "parent"})
        node.refresh_from_db()
        return self._page(node, status=400, **forms)

    def _page(self, node: Node, status: int = 200, **forms: Any) -> HttpResponse:
        can_manage = node.archived_at is None and self.scope.can_on(node, MANAGE_NODE)
        ancestors = list(
            Node.objects.filter(pk__in=node.ancestor_ids).exclude(pk=node.pk).order_by("depth")
        )
        children = (
            Node.objects.filter(parent=node)
            .filter(id__in=self.scope.visible_ids(VIEW_NODE))
            .order_by("archived_at", "name")
        )
        members = None
        if self.scope.can_on(node, VIEW_MEMBERS):
            members = Membership.objects.filter(node=node, removed_at__isnull=True).select_related(
                "user"
            )
        keys = None
        if node.kind == NodeKind.PROJECT and self.scope.can_on(node, VIEW_KEYS):
            keys = ApiKey.objects.filter(project=node).select_related("membership__user")[:50]
        context: dict[str, Any] = {
            "node": node,
            "ancestors": ancestors,
            "children": children,
            "child_kind": CHILD_KIND.get(NodeKind(node.kind)),
            "members": members,
            "keys": keys,
            "can_manage": can_manage,
            "is_root": node.parent_id is None,
        }
        if can_manage:
            context["rename_form"] = forms.get("rename_form") or NodeRenameForm(
                initial={"name": node.name, "slug": node.slug}
            )
            if node.parent_id is not None:
                context["move_form"] = forms.get("move_form") or NodeMoveForm(
                    parents=self._move_parents(node), initial={"parent": node.parent_id}
                )
                context["archive_form"] = forms.get("archive_form") or NodeArchiveForm()
        return self.render("console/node.html", context, status=status)
