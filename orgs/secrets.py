"""Secrets shown once: gateway keys (``mrk_``), personal access tokens (``mrp_``), service tokens
(``mrs_``, an organization's scoped tokens) and invitation tokens (``mri_``). Stored as a lookup
prefix plus an HMAC-SHA256 digest keyed with ``settings.KEY_HMAC_SECRET``; compared with
``hmac.compare_digest``.

Raw format: ``<kind><12 lowercase alphanumerics>_<43 url-safe characters>``; the stored prefix is
the first 16 characters (kind + lookup id).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from django.conf import settings

GATEWAY_KEY = "mrk_"
ACCESS_TOKEN = "mrp_"  # noqa: S105 (a prefix, not a secret)
SERVICE_TOKEN = "mrs_"  # noqa: S105 (a prefix, not a secret)
INVITATION = "mri_"
_LOOKUP_ALPHABET = string.ascii_lowercase + string.digits
_LOOKUP_LEN = 12
PREFIX_LEN = len(GATEWAY_KEY) + _LOOKUP_LEN


@dataclass(frozen=True)
class NewSecret:
    raw: str
    prefix: str
    digest: str


def digest_of(raw: str) -> str:
    secret = getattr(settings, "KEY_HMAC_SECRET", settings.SECRET_KEY).encode()
    return hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()


def new_secret(kind: str) -> NewSecret:
    lookup = "".join(secrets.choice(_LOOKUP_ALPHABET) for _ in range(_LOOKUP_LEN))
    raw = f"{kind}{lookup}_{secrets.token_urlsafe(32)}"
    return NewSecret(raw=raw, prefix=raw[:PREFIX_LEN], digest=digest_of(raw))


def prefix_of(raw: str, kind: str) -> str | None:
    """The lookup prefix of a well-formed raw secret of this kind, else None."""
    if not raw.startswith(kind) or len(raw) < PREFIX_LEN + 2 or raw[PREFIX_LEN] != "_":
        return None
    lookup = raw[len(kind) : PREFIX_LEN]
    if any(c not in _LOOKUP_ALPHABET for c in lookup):
        return None
    return raw[:PREFIX_LEN]


def matches(raw: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest_of(raw), stored_digest)
