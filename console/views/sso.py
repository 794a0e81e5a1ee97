"""Single sign-on pages: the sign-in (by email, or an organization's login URL) and its
callback, outside any organization; and the owner's configuration pages inside one
(``/o/<slug>/sso/``). The rules are identity.services'; docs/identity.md states them."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_http_methods

from console.forms import (
    GroupMappingForm,
    IdentityProviderForm,
    PasswordLoginForm,
    SsoEmailForm,
    SsoPolicyForm,
    add_service_errors,
)
from console.views.base import ConsoleOrgView
from console.views.login import client_ip, record_session
from identity import selectors, services
from identity.errors import SsoRefused
from identity.models import GroupMapping, IdentityProvider
from orgs.audit import Actor
from orgs.errors import InvalidInput
from orgs.login_limits import login_blocked, login_failed
from orgs.mfa import SSO_SESSION_ORG
from orgs.models import Node, Organization
from orgs.roles import MANAGE_MEMBERS
from orgs.selectors import is_owner_over, root_node

PENDING_KEY = "sso_pending"
MAX_PENDING = 5  # sign-ins one browser may have open at once


def _refused(request: HttpRequest, exc: SsoRefused, org: Organization | None) -> HttpResponse:
    if hasattr(request, "log_fields"):
        request.log_fields["sso_refused"] = exc.code
    context = {"title": exc.title, "detail": exc.detail, "code": exc.code, "org": org}
    return render(request, "sso/error.html", context, status=exc.status)


def _blocked(request: HttpRequest) -> HttpResponse | None:
    """The login rate limit of the client's address (orgs.login_limits), shared with password
    logins: failed single sign-on attempts (a refused callback, an email of no configured
    domain) count against the address like wrong passwords."""
    blocked = login_blocked(account="", ip=client_ip(request))
    if blocked is None:
        return None
    context = {"title": "Too many failed sign-ins", "detail": blocked.message, "code": "blocked"}
    response = render(request, "sso/error.html", context, status=429)
    response["Retry-After"] = str(blocked.retry_after_s)
    return response


def _live_org(org_slug: str) -> Organization:
    org = Organization.objects.filter(slug=org_slug, archived_at__isnull=True).first()
    if org is None:
        raise Http404("No such organization.")
    return org


def _callback_uri(request: HttpRequest, org: Organization) -> str:
    return request.build_absolute_uri(reverse("console:sso-callback", args=[org.slug]))


def _begin(
    request: HttpRequest, provider: IdentityProvider, login_hint: str, next_url: str
) -> HttpResponse:
    started = services.sso_start(
        provider=provider,
        redirect_uri=_callback_uri(request, provider.organization),
        login_hint=login_hint,
        next_url=next_url,
    )
    pending: dict[str, Any] = dict(request.session.get(PENDING_KEY) or {})
    pending[started.state] = started.pending
    while len(pending) > MAX_PENDING:
        pending.pop(min(pending, key=lambda s: pending[s].get("started", 0)))
    request.session[PENDING_KEY] = pending
    return redirect(started.url)


@require_http_methods(["POST"])
def sso_by_email(request: HttpRequest) -> HttpResponse:
    """The login page's "Sign in with single sign-on": the email's domain picks the provider."""
    if (blocked := _blocked(request)) is not None:
        return blocked
    form = SsoEmailForm(request.POST)
    next_url = request.POST.get("next", "")
    if form.is_valid():
        email = form.cleaned_data["email"]
        provider = selectors.provider_for_email(email)
        if provider is not None:
            query = urlencode({"provider": provider.pk, "login_hint": email, "next": next_url})
            return redirect(
                reverse("console:sso-org", args=[provider.organization.slug]) + "?" + query
            )
        domain = email.rpartition("@")[2]
        form.add_error("email", f"No single sign-on is set up for {domain}.")
        login_failed(account="", ip=client_ip(request))  # probing for configured domains
    return render(
        request,
        "registration/login.html",
        {"form": PasswordLoginForm(request), "sso_form": form, "next": next_url},
        status=400,
    )


@require_GET
def sso_org(request: HttpRequest, org_slug: str) -> HttpResponse:
    """``/sso/<org-slug>/``: the organization's login URL. One enabled provider (or the one
    ``?provider=`` names) starts at once; several: a choice."""
    org = _live_org(org_slug)
    providers = list(selectors.providers_of(org).filter(enabled=True))
    chosen = request.GET.get("provider")
    next_url = request.GET.get("next", "")
    try:
        if chosen:
            provider = selectors.provider_of(org, chosen)
            if provider is None:
                raise SsoRefused("no_provider")
            return _begin(request, provider, request.GET.get("login_hint", ""), next_url)
        if not providers:
            raise SsoRefused("no_provider")
        if len(providers) == 1:
            return _begin(request, providers[0], "", next_url)
    except SsoRefused as exc:
        return _refused(request, exc, org)
    return render(
        request, "sso/choose.html", {"org": org, "providers": providers, "next": next_url}
    )


@require_GET
def sso_callback(request: HttpRequest, org_slug: str) -> HttpResponse:
    """Where the provider sends the browser back (the redirect URI to register)."""
    org = _live_org(org_slug)
    if (blocked := _blocked(request)) is not None:
        return blocked
    pending_all: dict[str, Any] = dict(request.session.get(PENDING_KEY) or {})
    state = request.GET.get("state", "")
    pending = pending_all.pop(state, None) if state else None
    request.session[PENDING_KEY] = pending_all  # a state works once
    try:
        outcome = services.sso_complete(
            organization=org,
            pending=pending,
            params={k: request.GET.get(k, "") for k in ("code", "error")},
            redirect_uri=_callback_uri(request, org),
            actor=Actor(
                user=None,
                ip=request.META.get("REMOTE_ADDR") or None,
                request_id=getattr(request, "request_id", ""),
            ),
        )
    except SsoRefused as exc:
        login_failed(account="", ip=client_ip(request))
        return _refused(request, exc, org)
    auth_login(request, outcome.user, backend="django.contrib.auth.backends.ModelBackend")
    request.session["console_org"] = org.slug
    # this organization's MFA requirement is met by its own provider (orgs.mfa)
    request.session[SSO_SESSION_ORG] = org.pk
    request.session.save()  # a key for the sessions page's row
    record_session(request, mfa_passed=False)
    next_url = (pending or {}).get("next") or ""
    if next_url and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(next_url)
    return redirect("console:overview", org_slug=org.slug)


# ---------------------------------------------------------------- configuration (owners)


class _OwnerView(ConsoleOrgView):
    """Single sign-on is configured by the organization's owners only."""

    permission = MANAGE_MEMBERS
    post_permission = MANAGE_MEMBERS
    at_root = True
    section = "sso"

    def check_owner(self) -> None:
        if not is_owner_over(user_id=self.request.user.pk, node=root_node(self.organization)):
            raise PermissionDenied("Only an owner of the organization configures single sign-on.")


class SsoView(_OwnerView):
    """The organization's providers, the password-login policy, a form for a new provider."""

    def _page(self, form: Any = None, policy_form: Any = None, status: int = 200) -> HttpResponse:
        org = self.organization
        return self.render(
            "console/sso.html",
            {
                "providers": list(selectors.providers_of(org)),
                "form": form or IdentityProviderForm(),
                "policy_form": policy_form
                or SsoPolicyForm(
                    initial={"password_login_allowed": selectors.password_login_allowed(org)}
                ),
                "login_url": self.request.build_absolute_uri(
                    reverse("console:sso-org", args=[org.slug])
                ),
                "redirect_uri": _callback_uri(self.request, org),
            },
            status=status,
        )

    def get(self, request: HttpRequest, org_slug: str, action: str = "") -> HttpResponse:
        self.check_owner()
        if action:
            raise Http404
        return self._page()

    def post(self, request: HttpRequest, org_slug: str, action: str = "") -> HttpResponse:
        self.check_owner()
        if action == "policy":
            policy_form = SsoPolicyForm(self.request.POST)
            if policy_form.is_valid():
                services.sso_policy_update(
                    actor=self.scope.actor,
                    organization=self.organization,
                    password_login_allowed=policy_form.cleaned_data["password_login_allowed"],
                )
                messages.success(self.request, "Password login setting saved.")
                return redirect("console:sso", org_slug=self.organization.slug)
            return self._page(policy_form=policy_form, status=400)
        if action:
            raise Http404
        form = IdentityProviderForm(self.request.POST)
        if form.is_valid():
            try:
                provider = services.identity_provider_create(
                    actor=self.scope.actor, organization=self.organization, **form.service_fields()
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(self.request, f"Identity provider {provider.name} added.")
                return redirect("console:sso-provider", self.organization.slug, provider.pk)
        return self._page(form=form, status=400)


class SsoProviderView(_OwnerView):
    """One provider: its settings and its group-to-role mapping."""

    provider: IdentityProvider

    def _provider(self) -> IdentityProvider:
        provider = selectors.provider_of(self.organization, self.kwargs["pk"])
        if provider is None:
            raise Http404
        return provider

    def _nodes(self) -> Any:
        return Node.objects.filter(organization=self.organization, archived_at__isnull=True)

    def _page(
        self,
        provider: IdentityProvider,
        form: Any = None,
        mapping_form: Any = None,
        status: int = 200,
    ) -> HttpResponse:
        form = form or IdentityProviderForm(
            initial={
                "name": provider.name,
                "discovery_url": provider.discovery_url,
                "client_id": provider.client_id,
                "domains": "\n".join(d.domain for d in provider.domains.all()),
                "scopes": provider.scopes,
                "groups_claim": provider.groups_claim,
                "enabled": provider.enabled,
            },
            secret_required=False,
        )
        return self.render(
            "console/sso_provider.html",
            {
                "provider": provider,
                "form": form,
                "mapping_form": mapping_form or GroupMappingForm(nodes=self._nodes()),
                "mappings": list(selectors.mappings_of(provider)),
                "redirect_uri": _callback_uri(self.request, self.organization),
            },
            status=status,
        )

    def get(self, request: HttpRequest, org_slug: str, pk: int, action: str = "") -> HttpResponse:
        self.check_owner()
        if action:
            raise Http404
        return self._page(self._provider())

    def post(self, request: HttpRequest, org_slug: str, pk: int, action: str = "") -> HttpResponse:
        self.check_owner()
        provider = self._provider()
        actor = self.scope.actor
        if action == "mapping":
            mapping_form = GroupMappingForm(self.request.POST, nodes=self._nodes())
            if mapping_form.is_valid():
                try:
                    services.group_mapping_create(
                        actor=actor, provider=provider, **mapping_form.cleaned_data
                    )
                except InvalidInput as exc:
                    add_service_errors(mapping_form, exc)
                else:
                    messages.success(self.request, "Group mapping added.")
                    return redirect("console:sso-provider", self.organization.slug, provider.pk)
            return self._page(provider, mapping_form=mapping_form, status=400)
        if action == "unmap":
            mapping = GroupMapping.objects.filter(
                organization=self.organization,
                identity_provider=provider,
                pk=self.request.POST.get("mapping") or 0,
            ).first()
            if mapping is None:
                raise Http404
            services.group_mapping_delete(actor=actor, mapping=mapping)
            messages.success(self.request, f"Mapping of {mapping.group} removed.")
            return redirect("console:sso-provider", self.organization.slug, provider.pk)
        if action:
            raise Http404
        form = IdentityProviderForm(self.request.POST, secret_required=False)
        form.fields["client_secret"].required = False
        if form.is_valid():
            try:
                services.identity_provider_update(
                    actor=actor, provider=provider, **form.service_fields()
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(self.request, "Identity provider saved.")
                return redirect("console:sso-provider", self.organization.slug, provider.pk)
        return self._page(provider, form=form, status=400)
