"""Tokens for the management API: ``Authorization: Token mrp_...`` (a person's access token) or
``Token mrs_...`` (an organization's service token); ``Bearer`` works too. Gateway keys use
``mrk_`` and are never accepted here."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from orgs import secrets
from orgs.audit import SERVICE_TOKEN_LABEL
from orgs.models import PersonalAccessToken, ServiceToken
from orgs.selectors import SERVICE_TOKEN_REFUSALS, service_token_for

_KEYWORDS = {"token", "bearer"}
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def _raw_token(request: Any) -> str | None:
    """The token of an ``Authorization: Token|Bearer <raw>`` header, else None."""
    parts = get_authorization_header(request).split()
    if len(parts) != 2 or parts[0].lower().decode(errors="replace") not in _KEYWORDS:
        return None
    try:
        return parts[1].decode()
    except UnicodeDecodeError:
        raise AuthenticationFailed("Invalid token.", code="invalid_token") from None


def _touch(model: Any, row: Any, now: dt.datetime) -> None:
    """``last_used_at`` to now, at most once per ``LAST_USED_RESOLUTION`` (one conditional
    update, so concurrent requests do not all write)."""
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
        model.objects.filter(pk=row.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)


class ServiceTokenUser:
    """``request.user`` for a service token: authenticated, with no person (and no user id)
    behind it, so every per-user grant lookup finds nothing; the management API's choke point
    (``orgs.api.base``) asks the token's scopes instead."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, token: ServiceToken) -> None:
        self.service_token = token

    def get_username(self) -> str:
        return f"{SERVICE_TOKEN_LABEL}{self.service_token.name}"

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        return False

    def __str__(self) -> str:
        return self.get_username()


def service_token_of(request: Any) -> ServiceToken | None:
    """The service token that authenticated ``request``, else None."""
    return getattr(getattr(request, "user", None), "service_token", None)


class ServiceTokenAuthentication(BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Any) -> tuple[ServiceTokenUser, ServiceToken] | None:
        raw = _raw_token(request)
        if raw is None or not raw.startswith(secrets.SERVICE_TOKEN):
            return None
        token, state = service_token_for(raw)
        if token is None or state != "active":
            code = "invalid_token" if state == "invalid" else f"token_{state}"
            raise AuthenticationFailed(SERVICE_TOKEN_REFUSALS[state], code=code)
        _touch(ServiceToken, token, timezone.now())
        return ServiceTokenUser(token), token

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class AccessTokenAuthentication(BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Any) -> tuple[Any, PersonalAccessToken] | None:
        raw = _raw_token(request)
        if raw is None:
            return None
        if not raw.startswith(secrets.ACCESS_TOKEN):
            if raw.startswith(secrets.GATEWAY_KEY):
                raise AuthenticationFailed(
                    "Gateway API keys do not work on the management API; use a personal "
                    "access token (mrp_...) or a service token (mrs_...).",
                    code="invalid_token",
                )
            return None
        prefix = secrets.prefix_of(raw, secrets.ACCESS_TOKEN)
        token = (
            PersonalAccessToken.objects.select_related("user").filter(prefix=prefix).first()
            if prefix
            else None
        )
        if token is None or not secrets.matches(raw, token.digest):
            raise AuthenticationFailed("Invalid token.", code="invalid_token")
        now = timezone.now()
        if token.revoked_at is not None:
            raise AuthenticationFailed("This token has been revoked.", code="token_revoked")
        if token.expires_at is not None and token.expires_at <= now:
            raise AuthenticationFailed("This token has expired.", code="token_expired")
        if not token.user.is_active:
            raise AuthenticationFailed("User inactive.", code="user_inactive")
        _touch(PersonalAccessToken, token, now)
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "orgs.api.authentication.AccessTokenAuthentication"
    name = "accessToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "Personal access token: `Token mrp_...`",
        }


class ServiceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "orgs.api.authentication.ServiceTokenAuthentication"
    name = "serviceToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "An organization's service token: `Token mrs_...`, limited to its "
            "scopes and node (docs/management-api.md, Service tokens)",
        }
