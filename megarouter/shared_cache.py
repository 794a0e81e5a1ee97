"""The shared Django cache (Redis in production) for values that are only a shortcut to the
database: version counters and the like. When the cache is unreachable these helpers answer
"not cached" and skip writes, so callers fall through to the database instead of failing the
request. Socket timeouts in settings bound how long one call can wait."""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import cache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# What "the shared cache / Redis is unreachable" raises; every fallback to the database catches
# exactly this.
ERRORS = (RedisError, OSError)


def _failed(operation: str, key: str, exc: BaseException) -> None:
    logger.warning(
        "shared cache unavailable; using the database",
        extra={"fields": {"operation": operation, "key": key, "error": type(exc).__name__}},
    )


def get(key: str) -> Any:
    try:
        return cache.get(key)
    except ERRORS as exc:
        _failed("get", key, exc)
        return None


def set(key: str, value: Any, timeout: float | None) -> None:
    try:
        cache.set(key, value, timeout=timeout)
    except ERRORS as exc:
        _failed("set", key, exc)


def add(key: str, value: Any, timeout: float | None) -> None:
    try:
        cache.add(key, value, timeout=timeout)
    except ERRORS as exc:
        _failed("add", key, exc)
