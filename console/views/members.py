"""Members (roles on nodes) and invitations."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone

from console.forms import InvitationForm, MemberAddForm, MemberRoleForm, add_service_errors
from console.views.base import ConsoleOrgView, filtered, page_of
from orgs import services
from orgs.errors import InvalidInput
from orgs.models import Invitation, Membership, Node, Role
from orgs.roles import MANAGE_MEMBERS, VIEW_MEMBERS
from orgs.selectors import MEMBER_FILTERS, MEMBER_SEARCH, invitation_state


class _MemberBase(ConsoleOrgView):
    section = "members"

    def manageable_nodes(self) -> Any:
        return Node.objects.filter(
            organization=self.organization,
            archived_at__isnull=True,
            id__in=self.scope.visible_ids(MANAGE_MEMBERS),
        )


class MembersView(_MemberBase):
    permission = VIEW_MEMBERS
    post_permission = MANAGE_MEMBERS

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        return self._page(MemberAddForm(nodes=self.manageable_nodes()))

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = MemberAddForm(request.POST, nodes=self.manageable_nodes())
        if form.is_valid():
            node = form.cleaned_data["node"]
            self.scope.require(node, MANAGE_MEMBERS)
            user = (
                get_user_model()
                .objects.filter(username=form.cleaned_data["username"], is_active=True)
                .first()
            )
            if user is None:
                form.add_error(
                    "username", "No active user has this username; send an invitation instead."
                )
            else:
                try:
                    services.membership_create(
                        actor=self.scope.actor, node=node, user=user, role=form.cleaned_data["role"]
                    )
                except InvalidInput as exc:
                    add_service_errors(form, exc, {"user": "username"})
                else:
                    messages.success(request, f"{user.get_username()} added to {node.name}.")
                    return redirect("console:members", org_slug=org_slug)
        return self._page(form, status=400)

    def _page(self, form: MemberAddForm, status: int = 200) -> HttpResponse:
        request = self.request
        qs = (
            Membership.objects.filter(
                organization=self.organization,
                removed_at__isnull=True,
                node_id__in=self.scope.visible_ids(VIEW_MEMBERS),
            )
            .select_related("user", "node")
            .order_by("user__username", "node__path")
        )
        params = {"q": request.GET.get("q", "").strip(), "role": request.GET.get("role", "")}
        qs = filtered(request, qs, params, MEMBER_FILTERS, MEMBER_SEARCH)
        page = page_of(request, qs)
        manageable = (
            self.scope.visible_id_set(MANAGE_MEMBERS) if self.scope.can(MANAGE_MEMBERS) else set()
        )
        rows = [
            {
                "m": m,
                "can_manage": m.node_id in manageable,
                "role_form": MemberRoleForm(initial={"role": m.role}, prefix=f"m{m.pk}"),
            }
            for m in page.object_list
        ]
        return self.render(
            "console/members.html",
            {
                "page": page,
                "rows": rows,
                "form": form,
                "q": params["q"],
                "role": params["role"],
                "roles": Role.choices,
                "tab": "members",
            },
            status=status,
        )


class MemberActionView(_MemberBase):
    """POST ``/members/<pk>/role/`` or ``/members/<pk>/remove/``."""

    permission = MANAGE_MEMBERS
    post_permission = MANAGE_MEMBERS

    def get(self, request: HttpRequest, org_slug: str, pk: int, action: str) -> HttpResponse:
        return redirect("console:members", org_slug=org_slug)

    def post(self, request: HttpRequest, org_slug: str, pk: int, action: str) -> HttpResponse:
        if action not in ("role", "remove"):
            raise Http404
        membership = self.scoped_get(
            Membership.objects.select_related("user", "node").filter(removed_at__isnull=True),
            pk,
            node_field="node",
            perm=VIEW_MEMBERS,
        )
        self.scope.require(membership.node, MANAGE_MEMBERS)
        who = membership.user.get_username()
        try:
            if action == "role":
                form = MemberRoleForm(request.POST, prefix=f"m{membership.pk}")
                if not form.is_valid():
                    raise InvalidInput({"role": ["Choose a valid role."]})
                services.membership_update(
                    actor=self.scope.actor, membership=membership, role=form.cleaned_data["role"]
                )
                messages.success(
                    request,
                    f"{who} is now {Role(form.cleaned_data['role']).label.lower()} "
                    f"of {membership.node.name}.",
                )
            else:
                services.membership_remove(actor=self.scope.actor, membership=membership)
                messages.success(request, f"{who} removed from {membership.node.name}.")
        except InvalidInput as exc:
            for errors in exc.errors.values():
                for message in errors:
                    messages.error(request, message)
        return redirect(reverse("console:members", kwargs={"org_slug": org_slug}))


class InvitationsView(_MemberBase):
    permission = MANAGE_MEMBERS
    post_permission = MANAGE_MEMBERS

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        return self._page(InvitationForm(nodes=self.manageable_nodes()))

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = InvitationForm(request.POST, nodes=self.manageable_nodes())
        if form.is_valid():
            node = form.cleaned_data["node"]
            self.scope.require(node, MANAGE_MEMBERS)
            try:
                created = services.invitation_create(
                    actor=self.scope.actor,
                    node=node,
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                    ttl=dt.timedelta(hours=form.cleaned_data["ttl_hours"]),
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(
                    request, f"Invitation sent to {created.invitation.email} for {node.name}."
                )
                return redirect("console:invitations", org_slug=org_slug)
        return self._page(form, status=400)

    def _page(self, form: InvitationForm, status: int = 200) -> HttpResponse:
        qs = Invitation.objects.filter(
            organization=self.organization,
            node_id__in=self.scope.visible_ids(MANAGE_MEMBERS),
        ).select_related("node", "invited_by")
        page = page_of(self.request, qs)
        now = timezone.now()
        rows = [{"inv": inv, "status": invitation_state(inv, now=now)} for inv in page.object_list]
        return self.render(
            "console/invitations.html",
            {"page": page, "rows": rows, "form": form, "tab": "invitations"},
            status=status,
        )


class InvitationRevokeView(_MemberBase):
    permission = MANAGE_MEMBERS
    post_permission = MANAGE_MEMBERS

    def post(self, request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
        invitation = self.scoped_get(
            Invitation.objects.select_related("node"), pk, node_field="node", perm=MANAGE_MEMBERS
        )
        self.scope.require(invitation.node, MANAGE_MEMBERS)
        try:
            services.invitation_revoke(actor=self.scope.actor, invitation=invitation)
        except InvalidInput as exc:
            for errors in exc.errors.values():
                for message in errors:
                    messages.error(request, message)
        else:
            messages.success(request, f"Invitation for {invitation.email} revoked.")
        return redirect("console:invitations", org_slug=org_slug)
