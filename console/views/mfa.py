"""The user's own security pages. ``/account/mfa/``: turn multi-factor authentication on (a QR
code and the secret in text, confirmed with a code before it counts), see the recovery codes
once, make new ones, turn it off (password and a code); services in ``orgs.mfa``.
``/account/sessions/``: the user's live console sessions and "sign out other sessions";
services in ``orgs.login_sessions``."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import login as otp_login

from console.forms import MfaCodeForm, MfaConfirmForm, MfaDisableForm, add_service_errors
from console.views.base import render_page
from orgs import mfa
from orgs.errors import InvalidInput
from orgs.login_sessions import login_sessions_alive, login_sessions_end_others


def _next(request: HttpRequest) -> str:
    url = request.POST.get("next") or request.GET.get("next") or ""
    ok = url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return url if url and ok else ""


def _page(request: HttpRequest, status: int = 200, **context: Any) -> HttpResponse:
    user = request.user
    enabled = mfa.mfa_enabled(user)
    base: dict[str, Any] = {
        "enabled": enabled,
        "next": _next(request),
        "required_by": list(mfa.organizations_requiring_mfa(user).order_by("name")),
    }
    if enabled:
        base["codes_left"] = mfa.recovery_codes_left(user)
        base.setdefault("regenerate_form", MfaCodeForm(prefix="regenerate"))
        base.setdefault("disable_form", MfaDisableForm(prefix="disable"))
    else:
        base["enrolment"] = mfa.pending_enrolment(user)
        base["confirm_form"] = MfaConfirmForm()
    base.update(context)
    return render_page(request, "console/mfa.html", base, status)


@login_required
@require_http_methods(["GET"])
def mfa_page(request: HttpRequest) -> HttpResponse:
    return _page(request)


@login_required
@require_POST
def mfa_action(request: HttpRequest, action: str) -> HttpResponse:
    user = request.user
    if action == "start":
        try:
            mfa.mfa_enrolment_start(user=user)
        except InvalidInput:
            messages.info(request, "Multi-factor authentication is already on.")
        url = reverse("console:mfa")
        nxt = _next(request)
        return redirect(f"{url}?{urlencode({'next': nxt})}" if nxt else url)
    if action == "confirm":
        form = MfaConfirmForm(request.POST)
        if form.is_valid():
            try:
                device, codes = mfa.mfa_enrolment_confirm(user=user, code=form.cleaned_data["code"])
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                otp_login(request, device)  # this session has just proven the device
                return _codes(request, codes, first=True)
        return _page(request, 400, confirm_form=form)
    if action == "recovery-codes":
        form = MfaCodeForm(request.POST, prefix="regenerate")
        if form.is_valid():
            try:
                codes = mfa.mfa_recovery_codes_regenerate(user=user, code=form.cleaned_data["code"])
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                return _codes(request, codes, first=False)
        return _page(request, 400, regenerate_form=form)
    if action == "disable":
        form = MfaDisableForm(request.POST, prefix="disable")
        if form.is_valid():
            try:
                mfa.mfa_disable(user=user, **form.cleaned_data)
            except InvalidInput as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, "Multi-factor authentication is off.")
                return redirect("console:mfa")
        return _page(request, 400, disable_form=form)
    raise Http404


def _codes(request: HttpRequest, codes: list[str], *, first: bool) -> HttpResponse:
    """The recovery codes, shown this once (the page is the POST's answer, not stored)."""
    response = render_page(
        request,
        "console/mfa_codes.html",
        {"codes": codes, "first": first, "next": _next(request)},
    )
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_http_methods(["GET"])
def sessions_page(request: HttpRequest) -> HttpResponse:
    return render_page(
        request,
        "console/sessions.html",
        {
            "sessions": login_sessions_alive(user=request.user),
            "current_key": request.session.session_key,
        },
    )


@login_required
@require_POST
def sessions_end_others(request: HttpRequest) -> HttpResponse:
    ended = login_sessions_end_others(user=request.user, current_key=request.session.session_key)
    noun = "session" if ended == 1 else "sessions"
    messages.success(request, f"Signed out {ended} other {noun}.")
    return redirect("console:sessions")
