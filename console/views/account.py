"""Pages outside any organization: home, the organization list and creation, an invitation's
link (joining, with a new account when needed), and serving the console's static files."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles.views import serve as staticfiles_serve
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from console.forms import (
    InvitationAcceptForm,
    InvitationSignUpForm,
    OrganizationCreateForm,
    add_service_errors,
)
from console.views.base import render_page
from console.views.login import record_session
from orgs import services
from orgs.audit import Actor
from orgs.errors import InvalidInput
from orgs.selectors import (
    INVITATION_REFUSALS,
    invitation_for_token,
    organizations_for_user,
    user_with_email_exists,
)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The last organization used, else the only one, else the list to choose or create."""
    orgs = organizations_for_user(user=request.user)
    last = request.session.get("console_org")
    if last and orgs.filter(slug=last).exists():
        return redirect("console:overview", org_slug=last)
    slugs = list(orgs.values_list("slug", flat=True)[:2])
    if len(slugs) == 1:
        return redirect("console:overview", org_slug=slugs[0])
    return redirect("console:org-list")


@login_required
@require_http_methods(["GET", "POST"])
def org_list(request: HttpRequest) -> HttpResponse:
    form = OrganizationCreateForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                org = services.organization_create(
                    actor=Actor.from_request(request), owner=request.user, **form.cleaned_data
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Organization {org.name} created. You are its owner.")
                return redirect("console:overview", org_slug=org.slug)
        status = 400
    orgs = organizations_for_user(user=request.user).order_by("name")
    return render_page(request, "console/org_list.html", {"orgs": orgs, "form": form}, status)


@login_required
@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest) -> HttpResponse:
    """A pasted token (from an older email) opens the invitation's page, which accepts."""
    form = InvitationAcceptForm(request.POST or request.GET or None)
    if form.is_bound and form.is_valid():
        return redirect("console:invitation", token=form.cleaned_data["token"])
    status = 400 if request.method == "POST" else 200
    return render_page(request, "console/invitation_accept.html", {"form": form}, status)


# Status of the invitation page when the link cannot be used: unknown token 404, spent 410.
_REFUSED_STATUS = {"invalid": 404, "accepted": 410, "revoked": 410, "expired": 410, "archived": 410}


@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link of an invitation email (``orgs.selectors.invitation_url``).

    1. The token opens nothing usable: a page that says why (unknown, used, revoked, expired,
       archived) and shows nothing of any organization.
    2. Logged in as the invited email: one button, ``services.invitation_accept``.
    3. Logged in as someone else: log out first (the invitation is for another address).
    4. Logged out, an account already uses the email: log in first, then back here (2).
    5. Logged out, no account: name and password, ``services.invitation_accept_new_user``
       creates the account and the membership; the new user is logged in.
    """
    found = invitation_for_token(token=token)
    context: dict[str, Any] = {"state": found.state, "invitation": found.invitation}
    if found.invitation is None or found.state != "pending":
        context["refusal"] = INVITATION_REFUSALS[found.state]
        return render(
            request, "console/invitation.html", context, status=_REFUSED_STATUS[found.state]
        )
    inv = found.invitation
    actor = Actor.from_request(request)
    user = request.user
    if user.is_authenticated:
        if (user.email or "").strip().lower() != inv.email:
            context["state"] = "other_user"
            return render(request, "console/invitation.html", context, status=403)
        context["state"] = "join"
        if request.method == "POST":
            try:
                membership = services.invitation_accept(actor=actor, token=token)
            except InvalidInput as exc:
                context["errors"] = [m for texts in exc.errors.values() for m in texts]
                return render(request, "console/invitation.html", context, status=400)
            return _welcome(request, membership)
        return render(request, "console/invitation.html", context)
    if user_with_email_exists(inv.email):
        context["state"] = "log_in"
        return render(request, "console/invitation.html", context)
    context["state"] = "sign_up"
    form = InvitationSignUpForm(request.POST or None)
    context["form"] = form
    if request.method == "POST":
        if form.is_valid():
            try:
                membership = services.invitation_accept_new_user(
                    actor=actor,
                    token=token,
                    name=form.cleaned_data["name"],
                    password=form.cleaned_data["password1"],
                )
            except InvalidInput as exc:
                add_service_errors(form, exc, {"password": "password1"})
            else:
                auth_login(request, membership.user, backend=settings.AUTHENTICATION_BACKENDS[0])
                request.session.save()
                record_session(request, mfa_passed=False)
                return _welcome(request, membership)
        return render(request, "console/invitation.html", context, status=400)
    return render(request, "console/invitation.html", context)


def _welcome(request: HttpRequest, membership: Any) -> HttpResponse:
    org = membership.organization
    messages.success(
        request,
        f"Welcome to {org.name}: you are {membership.get_role_display().lower()} "
        f"of {membership.node.name}.",
    )
    return redirect("console:overview", org_slug=org.slug)


def static(request: HttpRequest, path: str) -> Any:
    """The console's (and admin's) static files, found by the staticfiles finders.

    ``make run`` serves Django under uvicorn, which has no static file handler; these files
    are small and cacheable, so Django serves them itself (a reverse proxy may take over
    ``/static/`` in front of it)."""
    response = staticfiles_serve(request, path, insecure=True)
    response["Cache-Control"] = "public, max-age=3600"
    return response
