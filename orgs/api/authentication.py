"""Personal access tokens for the management API: ``Authorization: Token mrp_...`` (or
``Bearer mrp_...``; gateway keys use ``mrk_`` and are never accepted here)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from orgs import secrets
from orgs.models import PersonalAccessToken

_KEYWORDS = {"token", "bearer"}
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class AccessTokenAuthentication(BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Any) -> tuple[Any, PersonalAccessToken] | None:
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower().decode(errors="replace") not in _KEYWORDS:
            return None
        try:
            raw = parts[1].decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid token.", code="invalid_token") from None
        if not raw.startswith(secrets.ACCESS_TOKEN):
            if raw.startswith(secrets.GATEWAY_KEY):
                raise AuthenticationFailed(
                    "Gateway API keys do not work on the management API; use a personal "
                    "access token (mrp_...).",
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
        if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
            PersonalAccessToken.objects.filter(pk=token.pk).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
            ).update(last_used_at=now)
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
