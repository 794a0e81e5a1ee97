"""Stale-while-revalidate for the hot path's in-process caches (catalog snapshot, policy table,
budgets): once a value exists, a request never waits for its periodic re-check. The first
request after the check interval gets the value it already had and schedules one refresh in
the background (single flight per key); the refresh runs the cache's ordinary sync loader on
Django's sync thread, so a slow or unreachable database delays the refresh, never a request.
A failed refresh is logged and retried by the next request after the interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async

logger = logging.getLogger(__name__)

_running: dict[Any, asyncio.Future[Any]] = {}


def in_background(key: Any, load: Callable[[], Any]) -> None:
    """Run ``load()`` (sync) off the request, unless a refresh for ``key`` is running."""
    running = _running.get(key)
    if running is not None and not running.done():
        return
    task = asyncio.ensure_future(sync_to_async(load, thread_sensitive=True)())
    _running[key] = task
    task.add_done_callback(lambda done: _finished(key, done))


def _finished(key: Any, task: asyncio.Future[Any]) -> None:
    if _running.get(key) is task:
        del _running[key]
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.warning(
            "background refresh failed; serving the cached value",
            extra={"fields": {"cache": str(key), "error": type(exc).__name__}},
        )
