"""Counts of the requests that did not succeed (``FailedRequestCount``), per key, model,
provider, HTTP status and error code, by UTC hour. Metadata only.

The gateway calls :func:`failure_record` once per unsuccessful authenticated request. Counting
is in memory (a dict increment under a lock, nothing awaited on the request path); a flusher
thread per process (started by the first count, whatever transport serves it) adds the
counts to the table every ``BILLING_FAILURES_FLUSH_SECONDS`` (5 s), in one transaction, by
upsert (``count = count + n``), so any number of gateway processes add to the same rows. A
process that dies loses at most its last interval's counts (these are observations, not
charges: no money depends on them); a stopping one writes its last counts at shutdown. 0 (the
test suite) writes each count before the response.

A 429 storm costs one row per (key, hour, code), not one per request: the table's size is
bounded by keys x hours x the handful of codes, and an unknown model name is stored as "" so
a caller's typos cannot grow it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F
from django.utils import timezone

from billing.models import FailedRequestCount

logger = logging.getLogger(__name__)

INLINE_TRIES = 40  # writes each count before the response: attempts (2 s) before keeping it
MAX_PENDING = 50_000  # distinct rows held between flushes; beyond, new combinations are dropped


@dataclass(frozen=True, slots=True)
class FailureKey:
    organization_id: int
    hour: dt.datetime
    department_id: int
    team_id: int
    project_id: int
    member_id: int
    key_id: int
    model: str
    provider: str
    status: int
    code: str
    charged: bool


class FailureCounter:
    """What this process counted since its last flush."""

    def __init__(self) -> None:
        self._counts: dict[FailureKey, int] = {}
        self._lock = threading.Lock()
        self.dropped = 0

    def add(self, key: FailureKey, n: int = 1) -> None:
        with self._lock:
            if key in self._counts:
                self._counts[key] += n
            elif len(self._counts) < MAX_PENDING:
                self._counts[key] = n
            else:
                self.dropped += n

    @property
    def pending(self) -> int:
        return len(self._counts)

    def take(self) -> dict[FailureKey, int]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts

    def put_back(self, counts: dict[FailureKey, int]) -> None:
        for key, n in counts.items():
            self.add(key, n)


_counter = FailureCounter()
_flusher: dict[str, threading.Thread] = {}
_flusher_lock = threading.Lock()


def failure_key(
    key: Any,
    *,
    model: str,
    provider: str,
    status: int,
    code: str | None,
    charged: bool = False,
    now: dt.datetime | None = None,
) -> FailureKey:
    """``key`` is the caller's ``orgs.keys.KeyContext``."""
    moment = (now or timezone.now()).astimezone(dt.UTC)
    return FailureKey(
        organization_id=key.organization_id,
        hour=moment.replace(minute=0, second=0, microsecond=0),
        department_id=key.department_id or 0,
        team_id=key.team_id or 0,
        project_id=key.project_id or 0,
        member_id=key.member_id or 0,
        key_id=key.key_id,
        model=model[:255],
        provider=provider[:64],
        status=status,
        code=(code or "")[:64],
        charged=charged,
    )


async def failure_record(failure: FailureKey) -> None:
    """Count one unsuccessful request: in memory (written within the flush interval), or
    written now when the interval is 0."""
    _counter.add(failure)
    every = float(settings.BILLING_FAILURES_FLUSH_SECONDS)
    if every <= 0:
        for _ in range(INLINE_TRIES):  # a table lock (SQLite) held by a reader passes
            await sync_to_async(failures_flush, thread_sensitive=True)()
            if not _counter.pending:
                return
            await asyncio.sleep(0.05)
        return
    _flusher_start(every)


def _flusher_start(every: float) -> None:
    """The process's flusher: one daemon thread, started by the first count (whatever serves
    the request: the ASGI front door's loop, or a Django view's per-request loop)."""
    thread = _flusher.get("thread")
    if thread is not None and thread.is_alive():
        return
    with _flusher_lock:
        thread = _flusher.get("thread")
        if thread is None or not thread.is_alive():
            thread = threading.Thread(
                target=_flush_forever, args=(every,), name="failure-counts", daemon=True
            )
            _flusher["thread"] = thread
            thread.start()


def _flush_forever(every: float) -> None:
    """Every ``every`` seconds (the setting, read each round), the counts; ends when the
    setting turns to 0 (counts written before the response), closing its connection."""
    try:
        while every > 0:
            time.sleep(every)
            try:
                _flush_in_thread()
            except Exception:  # the next round tries again
                logger.warning("failed-request flush round failed", exc_info=True)
            every = float(settings.BILLING_FAILURES_FLUSH_SECONDS)
    finally:
        connection.close()


def _flush_in_thread() -> None:
    if not _counter.pending:  # nothing counted: the database is not touched
        return
    close_old_connections()  # a connection the database dropped since the last flush
    failures_flush()


def failures_flush() -> int:
    """Add the counted failures to the table; returns the rows touched. A database failure
    keeps the counts for the next flush."""
    counts = _counter.take()
    if not counts:
        return 0
    try:
        with transaction.atomic():
            for key, n in sorted(counts.items(), key=_order):
                _upsert(key, n)
    except Exception:
        _counter.put_back(counts)
        logger.warning("failed-request counts not written; kept for the next flush", exc_info=True)
        return 0
    return len(counts)


def _order(item: tuple[FailureKey, int]) -> tuple[Any, ...]:
    # One order for every process's transaction: two flushes never wait on each other's rows
    # in opposite orders (no deadlock).
    k = item[0]
    return (k.organization_id, k.hour, k.key_id, k.model, k.provider, k.status, k.code, k.charged)


def _upsert(key: FailureKey, n: int) -> None:
    match = {
        "organization_id": key.organization_id,
        "hour": key.hour,
        "key_id": key.key_id,
        "model": key.model,
        "provider": key.provider,
        "status": key.status,
        "code": key.code,
        "charged": key.charged,
    }
    rows = FailedRequestCount.objects.filter(**match)
    if rows.update(count=F("count") + n):
        return
    try:
        with transaction.atomic():  # a savepoint: another process may insert the row first
            FailedRequestCount.objects.create(
                **match,
                department_id=key.department_id,
                team_id=key.team_id,
                project_id=key.project_id,
                member_id=key.member_id,
                count=n,
            )
    except IntegrityError:
        rows.update(count=F("count") + n)


async def failures_shutdown() -> None:
    """The last counts of a stopping process (the gateway's lifespan shutdown; the flusher
    thread is a daemon and ends with the process)."""
    await asyncio.to_thread(_flush_in_thread)


def reset_failures() -> None:
    """Tests: forget what was counted and not flushed."""
    _counter.take()
