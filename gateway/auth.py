"""Gateway authentication: the caller's key from ``Authorization: Bearer`` (OpenAI clients) or
``x-api-key`` (Anthropic clients), resolved to the orgs key context (cached in-process)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import AuthenticationFailed, PermissionDenied

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


async def authenticate(headers: Mapping[str, str], client_ip: str | None) -> Any:
    from orgs.keys import KeyRejected, ip_allowed, key_context_for

    try:
        context = await key_context_for(key_from_headers(headers))
    except KeyRejected as rejected:
        message, code = _MESSAGES[rejected.reason]
        raise AuthenticationFailed(message, code=code) from None
    if not ip_allowed(context, client_ip):
        raise PermissionDenied(
            "This API key may not be used from this address.", code="ip_not_allowed"
        )
    return context


def model_allowed(context: Any, model_id: str) -> bool:
    from orgs.keys import model_allowed as allowed

    return allowed(context, model_id)
