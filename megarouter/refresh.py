"""Bounded revalidation for the hot path's in-process caches (catalog snapshot, policy table):
once a value exists, the first request after the check interval (1 s) starts one re-check
(single flight per key: the version counter, in the shared cache, then a rebuild only when it
moved) and waits for it at most ``MEGAROUTER_REFRESH_WAIT_S`` (1 s). The re-check is a cache
read (well under a millisecond) and a rebuild tens of milliseconds, so a configuration change
reaches every worker before it serves its next request, an idle one included; a re-check that
hangs (a database unreachable while the shared cache lost the version) costs that request the
bound, then it gets the value it had and the refresh goes on in the background (requests
arriving meanwhile wait on the same re-check, within the same bound). The refresh runs the
cache's ordinary sync loader on a small thread pool of its own (not Django's shared sync
thread, which the async cache API and cold key loads use: a refresh hanging on an
unreachable database must not queue those). A failed refresh is logged and retried by the
next request after the interval. ``MEGAROUTER_REFRESH_POOL = False`` (the test suite) runs
them on Django's sync thread instead, where a test's transaction is."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger(__name__)
T = TypeVar("T")

_running: dict[Any, asyncio.Future[Any]] = {}
# Single flight per key bounds what can hang here to one thread per cache; two threads are
# enough for the three caches' sub-second reloads.
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cache-refresh")


def _run(load: Callable[[], Any]) -> Any:
    close_old_connections()
    try:
        return load()
    finally:
        connection.close()  # one short-lived connection per refresh: nothing held while idle


def in_background(key: Any, load: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run ``load()`` (sync) off the request, unless a refresh for ``key`` is running; returns
    the refresh (the running one, or the one started)."""
    running = _running.get(key)
    if running is not None and not running.done():
        return running
    task: asyncio.Future[Any]
    if settings.MEGAROUTER_REFRESH_POOL:
        task = asyncio.get_running_loop().run_in_executor(_pool, _run, load)
    else:  # the test suite: its data lives in the test thread's open transaction
        task = asyncio.ensure_future(sync_to_async(load, thread_sensitive=True)())
    _running[key] = task
    task.add_done_callback(lambda done: _finished(key, done))
    return task


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


class Versioned(Generic[T]):
    """A value built from the database and kept in the process, re-checked at most once per
    ``max_age`` seconds: ``is_stale(value)`` asks the version counter (shared cache, else the
    database) whether it changed, and a changed value is rebuilt. ``get`` is the sync read
    (a check blocks the caller); ``aget`` the hot path's (the check runs on the refresh pool
    and the request waits for it within ``MEGAROUTER_REFRESH_WAIT_S``). The catalog snapshot
    and the policy table are the two of these."""

    def __init__(self, name: str, build: Callable[[], T], is_stale: Callable[[T], bool]) -> None:
        self.name = name
        self.build = build
        self.is_stale = is_stale
        self.value: T | None = None
        self.checked_at = 0.0
        self.lock = threading.Lock()

    def get(self, max_age: float) -> T:
        value = self.value
        if value is not None and time.monotonic() - self.checked_at < max_age:
            return value
        with self.lock:
            value = self.value
            if value is not None and time.monotonic() - self.checked_at < max_age:
                return value
            if value is None or self.is_stale(value):
                value = self.build()
                self.value = value
            self.checked_at = time.monotonic()
            return value

    async def aget(self, max_age: float) -> T:
        value = self.value
        if value is None:
            return await sync_to_async(self.get)(max_age)
        if time.monotonic() - self.checked_at < max_age:
            return value
        # The re-check (and the rebuild when the version moved) runs off the request; the
        # request waits for it up to MEGAROUTER_REFRESH_WAIT_S, so a change made while this
        # worker was idle applies to its next request. Beyond the bound (a database that
        # hangs) the request gets the value it had; the refresh goes on in the background.
        refreshing = in_background(self.name, lambda: self.get(max_age))
        try:
            return await asyncio.wait_for(
                asyncio.shield(refreshing), timeout=settings.MEGAROUTER_REFRESH_WAIT_S
            )
        except Exception:  # timed out, or failed (logged by _finished): the value it had
            return value

    def reset(self) -> None:
        with self.lock:
            self.value = None
            self.checked_at = 0.0
