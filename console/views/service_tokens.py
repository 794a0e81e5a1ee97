"""Service tokens: the organization's scoped tokens for the management API (list, create with
the secret shown once, change the expiry, revoke). The same rules as the API's
``/api/orgs/<org>/service-tokens/``: ``manage_members`` on the token's node, and the creator's
role there covers every scope (``orgs.services.service_token_create``)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone

from console.forms import ServiceTokenExpiryForm, ServiceTokenForm, add_service_errors
from console.views.base import ConsoleOrgView, filtered, page_of
from orgs import services
from orgs.errors import InvalidInput, NotAllowed
from orgs.models import Node, ServiceToken
from orgs.roles import MANAGE_MEMBERS
from orgs.selectors import (
    SERVICE_TOKEN_FILTERS,
    SERVICE_TOKEN_SEARCH,
    service_token_state,
    service_tokens_of,
)


class _ServiceTokenBase(ConsoleOrgView):
    section = "service-tokens"
    permission = MANAGE_MEMBERS
    post_permission = MANAGE_MEMBERS

    def manageable_nodes(self) -> Any:
        return Node.objects.filter(
            organization=self.organization,
            archived_at__isnull=True,
            id__in=self.scope.visible_ids(MANAGE_MEMBERS),
        ).order_by("path")


class ServiceTokensView(_ServiceTokenBase):
    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        return self._page(ServiceTokenForm(nodes=self.manageable_nodes()))

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = ServiceTokenForm(request.POST, nodes=self.manageable_nodes())
        if form.is_valid():
            node = form.cleaned_data["node"]
            self.scope.require(node, MANAGE_MEMBERS)
            try:
                created = services.service_token_create(
                    actor=self.scope.actor,
                    node=node,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=form.cleaned_data["expires_at"],
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            except NotAllowed as exc:  # a scope the creator's role does not cover
                form.add_error("scopes", exc.detail)
            else:
                response = self.render(
                    "console/service_token_secret.html",
                    {"token": created.token, "raw_token": created.raw_token},
                )
                response["Cache-Control"] = "no-store"  # the secret stays out of caches
                return response
        return self._page(form, status=400)

    def _page(self, form: ServiceTokenForm, status: int = 200) -> HttpResponse:
        qs = service_tokens_of(organization=self.organization).filter(
            node_id__in=self.scope.visible_ids(MANAGE_MEMBERS)
        )
        page = page_of(
            self.request,
            filtered(
                self.request, qs, self.request.GET, SERVICE_TOKEN_FILTERS, SERVICE_TOKEN_SEARCH
            ),
        )
        now = timezone.now()
        rows = [
            {
                "token": token,
                "state": service_token_state(token, now=now),
                "expiry_form": ServiceTokenExpiryForm(
                    initial={"expires_at": token.expires_at}, prefix=f"t{token.pk}"
                ),
            }
            for token in page.object_list
        ]
        return self.render(
            "console/service_tokens.html",
            {"page": page, "rows": rows, "form": form},
            status=status,
        )


class ServiceTokenActionView(_ServiceTokenBase):
    """POST ``/service-tokens/<pk>/<action>/`` with action ``expiry`` or ``revoke``."""

    actions = ("expiry", "revoke")

    def post(self, request: HttpRequest, org_slug: str, pk: int, action: str) -> HttpResponse:
        if action not in self.actions:
            raise Http404
        token: ServiceToken = self.scoped_get(
            service_tokens_of(organization=self.organization),
            pk,
            node_field="node",
            perm=MANAGE_MEMBERS,
        )
        self.scope.require(token.node, MANAGE_MEMBERS)
        try:
            if action == "revoke":
                services.service_token_revoke(actor=self.scope.actor, token=token)
                messages.success(request, f"Service token {token.name} revoked.")
            else:
                form = ServiceTokenExpiryForm(request.POST, prefix=f"t{token.pk}")
                if not form.is_valid():
                    for errors in form.errors.values():
                        for message in errors:
                            messages.error(request, f"Expiry: {message}")
                    return redirect("console:service-tokens", org_slug=org_slug)
                services.service_token_update(
                    actor=self.scope.actor, token=token, expires_at=form.cleaned_data["expires_at"]
                )
                messages.success(request, f"Expiry of service token {token.name} saved.")
        except (InvalidInput, NotAllowed) as exc:
            texts = (
                [m for ms in exc.errors.values() for m in ms]
                if isinstance(exc, InvalidInput)
                else [exc.detail]
            )
            for message in texts:
                messages.error(request, message)
        return redirect("console:service-tokens", org_slug=org_slug)
