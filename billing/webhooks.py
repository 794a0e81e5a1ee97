"""Signatures: verifying payment provider webhooks and signing the alerts we send.

The scheme is Stripe's: header ``t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
(several ``v1`` entries allowed, during a secret rotation). A timestamp further than the
tolerance from now is refused, so a captured request cannot be replayed later; a replay inside
the window is harmless because events are applied once by id.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from billing.errors import WebhookRejected


def sign(*, payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    *, payload: bytes, header: str | None, secret: str, tolerance: int, now: float | None = None
) -> None:
    """Raise WebhookRejected unless ``header`` signs ``payload`` with ``secret`` recently."""
    if not secret:
        raise WebhookRejected(
            "The payment webhook secret is not configured.", code="not_configured"
        )
    if not header:
        raise WebhookRejected("Missing signature header.", code="signature_missing")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookRejected("Malformed signature header.", code="signature_malformed")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookRejected(
            "The signature timestamp is outside the tolerance window.", code="signature_expired"
        )
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256
    ).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookRejected("The signature does not match.", code="signature_invalid")
