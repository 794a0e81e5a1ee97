"""Gateway authentication: the caller's key from ``Authorization: Bearer`` (OpenAI clients) or
``x-api-key`` (Anthropic clients), resolved to the orgs key context (cached in-process)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.cache import cache

from gateway.errors import AuthenticationFailed, PermissionDenied, RateLimited
from megarouter import shared_cache
from orgs.keys import KeyRejected, ip_allowed, key_context_for
from orgs.keys import model_allowed as allowed

logger = logging.getLogger(__name__)

_MESSAGES = {
    "missing": (
        "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
        "missing_api_key",
    ),
    "invalid": ("Incorrect API key provided.", "invalid_api_key"),
    "revoked": ("This API key has been revoked.", "api_key_revoked"),
    "expired": ("This API key has expired.", "api_key_expired"),
    "inactive": ("This API key is no longer active.", "api_key_inactive"),
}


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """Headers with lower-case names."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


class _GuessGuard:
    """Limits failed key attempts per client address, so keys cannot be guessed at speed.

    Failures are counted in the shared cache (Redis in production) in fixed one-minute windows.
    Once an address passes the limit, every process that sees it fail again refuses all of its
    requests for the rest of the window with 429, before any key lookup: answering valid keys
    normally would tell a guesser which guess was right. Successful requests cost nothing here.
    """

    WINDOW = 60

    def __init__(self) -> None:
        self._blocked: dict[str, float] = {}  # address -> monotonic time the block ends

    def check(self, client_ip: str | None) -> None:
        if not client_ip or not self._blocked:
            return
        until = self._blocked.get(client_ip)
        if until is None:
            return
        now = time.monotonic()
        if now < until:
            raise RateLimited(
                "Too many requests with invalid API keys from this address.",
                retry_after=until - now,
                code="too_many_auth_failures",
            )
        del self._blocked[client_ip]

    async def failed(self, client_ip: str | None) -> None:
        limit = settings.MEGAROUTER_AUTH_FAILURES_PER_MINUTE
        if not client_ip or limit <= 0:
            return
        window = int(time.time() // self.WINDOW)
        key = f"authfail:{client_ip}:{window}"
        try:
            await cache.aadd(key, 0, self.WINDOW + 5)
            count = await cache.aincr(key)
        except shared_cache.ERRORS:  # a cache outage must not turn a 401 into a 500
            logger.warning("auth failure counter unavailable")
            return
        if count > limit:
            remaining = self.WINDOW - (time.time() % self.WINDOW)
            self._blocked[client_ip] = time.monotonic() + remaining
            if len(self._blocked) > 100_000:  # bounded memory under a spray of addresses
                self._blocked.clear()
            self.check(client_ip)


guess_guard = _GuessGuard()


async def authenticate(headers: Mapping[str, str], client_ip: str | None) -> Any:
    guess_guard.check(client_ip)
    try:
        context = await key_context_for(key_from_headers(headers))
    except KeyRejected as rejected:
        if rejected.reason != "missing":
            await guess_guard.failed(client_ip)
        message, code = _MESSAGES[rejected.reason]
        raise AuthenticationFailed(message, code=code) from None
    if not ip_allowed(context, client_ip):
        raise PermissionDenied(
            "This API key may not be used from this address.", code="ip_not_allowed"
        )
    return context


def model_allowed(context: Any, model_id: str) -> bool:
    return allowed(context, model_id)
