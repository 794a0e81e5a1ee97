"""Admission: reserve a request's worst-case cost before calling a provider, settle after.

``get_backend()`` returns the process's backend: Redis when ``BILLING_ADMISSION_BACKEND`` is
``redis`` (the default when REDIS_URL is set), else the database. Both implement
``AdmissionBackend``; see ``billing.admission.base`` for the call sequence.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings

from billing.admission.base import (
    AdmissionBackend,
    AdmissionContext,
    HoldRequest,
    Reservation,
    UsageEventData,
)

__all__ = [
    "AdmissionBackend",
    "AdmissionContext",
    "HoldRequest",
    "Reservation",
    "UsageEventData",
    "get_backend",
    "reset_backend",
]

_backend: Any = None
_lock = threading.Lock()


def get_backend() -> Any:
    global _backend
    if _backend is None:
        with _lock:
            if _backend is None:
                _backend = make_backend(settings.BILLING_ADMISSION_BACKEND)
    return _backend


def make_backend(name: str) -> Any:
    if name == "redis":
        from billing.admission.redis import RedisBackend

        return RedisBackend()
    from billing.admission.db import DatabaseBackend

    return DatabaseBackend()


def reset_backend(backend: Any = None) -> None:
    """Replace the process's backend (tests)."""
    global _backend
    _backend = backend
