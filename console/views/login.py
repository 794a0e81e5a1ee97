"""Logging in to the console: the password step, then the MFA step for users who have MFA on
(docs/identity.md). Both steps are rate limited per account and per client address
(``orgs.login_limits``); only a completed login resets the account's count.

1. ``LoginView`` (``/login/``): refused with 429 while the account or the address is blocked;
   a wrong password counts a failure; a right one logs in, or, when the user has MFA on, keeps
   the user as *pending* in the session (for ``PENDING_TTL_S``) and sends them to step 2.
2. ``login_mfa`` (``/login/mfa/``): a code from the app or a recovery code completes the login
   (``auth_login`` then ``django_otp.login``, which marks the session verified); a wrong code
   counts a failure. A user already logged in whose session has not passed MFA (one that
   started before they turned MFA on) verifies the session here too, when an organization that
   requires MFA sends them.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_http_methods
from django_otp import login as otp_login
from django_otp.plugins.otp_static.models import StaticDevice

from console.forms import MfaCodeForm
from orgs import mfa
from orgs.login_limits import login_blocked, login_failed, login_succeeded
from orgs.login_sessions import login_session_ended, login_session_record

PENDING_KEY = "mfa_pending"
PENDING_TTL_S = 300


def client_ip(request: HttpRequest) -> str | None:
    """The address the limits count (``REMOTE_ADDR``, as the audit log records it)."""
    return request.META.get("REMOTE_ADDR") or None


def record_session(request: HttpRequest, *, mfa_passed: bool) -> None:
    """The sessions page's row of the session a login just started (``orgs.login_sessions``)."""
    login_session_record(
        user=request.user,
        session_key=request.session.session_key or "",
        ip=client_ip(request),
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        mfa=mfa_passed,
    )


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        account = request.POST.get("username", "")
        ip = client_ip(request)
        blocked = login_blocked(account=account, ip=ip)
        if blocked is not None:
            return self._blocked(blocked.message, account)
        form = self.get_form()
        if form.is_valid():
            return self.form_valid(form)
        login_failed(account=account, ip=ip)
        blocked = login_blocked(account=account, ip=ip)
        if blocked is not None:
            return self._blocked(blocked.message, account)
        return self.form_invalid(form)

    def _blocked(self, message: str, account: str) -> HttpResponse:
        form = self.form_class(self.request, initial={"username": account})
        context = self.get_context_data(form=form, blocked=message)
        return self.render_to_response(context, status=429)

    def form_valid(self, form: Any) -> HttpResponse:
        user = form.get_user()
        if mfa.mfa_enabled(user):
            self.request.session[PENDING_KEY] = {
                "user": user.pk,
                "backend": user.backend,
                "at": time.time(),
                "next": self.get_redirect_url(),
            }
            return redirect("console:login-mfa")
        login_succeeded(account=user.get_username())
        response = super().form_valid(form)
        self.request.session.save()  # a key to record before the response
        record_session(self.request, mfa_passed=False)
        return response


class LogoutView(auth_views.LogoutView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        login_session_ended(session_key=request.session.session_key)
        return super().post(request, *args, **kwargs)


def admin_login(request: HttpRequest) -> HttpResponse:
    """``/admin/login/``: the Django admin's own login form would skip the rate limits and MFA
    (and answer whether a password is right for any account), so it sends people to the
    console's login and back. Logged in already: staff go to the admin, others get 403."""
    if request.user.is_authenticated:
        if request.user.is_staff:
            return redirect("admin:index")
        raise PermissionDenied("The Django admin is for platform staff.")
    next_url = _safe_next(request, request.GET.get("next", "")) if request.GET.get("next") else ""
    query = urlencode({"next": next_url or reverse("admin:index")})
    return redirect(f"{reverse('console:login')}?{query}")


def _pending(request: HttpRequest) -> tuple[Any, dict[str, Any]] | None:
    data = request.session.get(PENDING_KEY)
    if not isinstance(data, dict) or time.time() - float(data.get("at", 0)) > PENDING_TTL_S:
        request.session.pop(PENDING_KEY, None)
        return None
    user = get_user_model().objects.filter(pk=data.get("user"), is_active=True).first()
    return None if user is None else (user, data)


def _safe_next(request: HttpRequest, url: str) -> str:
    ok = url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return url if url and ok else settings.LOGIN_REDIRECT_URL


@require_http_methods(["GET", "POST"])
def login_mfa(request: HttpRequest) -> HttpResponse:
    pending = _pending(request)
    if pending is not None:
        user, data = pending
        next_url = _safe_next(request, data.get("next") or "")
    elif (
        request.user.is_authenticated
        and mfa.mfa_enabled(request.user)
        and not mfa.session_verified(request.user)
    ):
        user, data = request.user, None
        next_url = _safe_next(request, request.POST.get("next") or request.GET.get("next", ""))
    else:
        return redirect(settings.LOGIN_URL)
    form = MfaCodeForm(request.POST or None)
    context: dict[str, Any] = {"form": form, "next": next_url, "verifying": data is None}
    if request.method != "POST":
        return render(request, "registration/login_mfa.html", context)
    account, ip = user.get_username(), client_ip(request)
    blocked = login_blocked(account=account, ip=ip)
    if blocked is not None:
        context["blocked"] = blocked.message
        return render(request, "registration/login_mfa.html", context, status=429)
    wait = mfa.throttled_for(user)
    if wait:
        form.is_valid()
        form.add_error("code", f"Too many wrong codes in a row: wait {wait} s and try again.")
        return render(request, "registration/login_mfa.html", context, status=429)
    device = mfa.mfa_verify(user=user, code=form.cleaned_data["code"]) if form.is_valid() else None
    if device is None:
        login_failed(account=account, ip=ip)
        if form.is_valid():
            form.add_error("code", mfa.WRONG_CODE)
        blocked = login_blocked(account=account, ip=ip)
        if blocked is not None:
            context["blocked"] = blocked.message
            return render(request, "registration/login_mfa.html", context, status=429)
        return render(request, "registration/login_mfa.html", context, status=400)
    if data is not None:
        request.session.pop(PENDING_KEY, None)
        auth_login(request, user, backend=data["backend"])
    otp_login(request, device)
    request.session.save()
    record_session(request, mfa_passed=True)
    login_succeeded(account=account)
    if isinstance(device, StaticDevice):
        left = mfa.recovery_codes_left(user)
        messages.warning(
            request,
            f"You logged in with a recovery code; {left} left. "
            "Make new ones on the multi-factor authentication page if you are running low.",
        )
    return redirect(next_url)
