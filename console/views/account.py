"""Pages outside any organization: home, the organization list and creation, accepting an
invitation, and serving the console's static files."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles.views import serve as staticfiles_serve
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods

from console.forms import InvitationAcceptForm, OrganizationCreateForm, add_service_errors
from console.views.base import render_page
from orgs import services
from orgs.audit import Actor
from orgs.errors import InvalidInput
from orgs.selectors import organizations_for_user


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
    form = InvitationAcceptForm(request.POST or request.GET or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                membership = services.invitation_accept(
                    actor=Actor.from_request(request), token=form.cleaned_data["token"]
                )
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                org = membership.organization
                messages.success(
                    request,
                    f"Welcome to {org.name}: you are {membership.get_role_display().lower()} "
                    f"of {membership.node.name}.",
                )
                return redirect("console:overview", org_slug=org.slug)
        status = 400
    return render_page(request, "console/invitation_accept.html", {"form": form}, status)


def static(request: HttpRequest, path: str) -> Any:
    """The console's (and admin's) static files, found by the staticfiles finders.

    ``make run`` serves Django under uvicorn, which has no static file handler; these files
    are small and cacheable, so Django serves them itself (a reverse proxy may take over
    ``/static/`` in front of it)."""
    response = staticfiles_serve(request, path, insecure=True)
    response["Cache-Control"] = "public, max-age=3600"
    return response
