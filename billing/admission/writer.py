"""Write-behind of the Redis backend's database rows: reservations and usage events in batches.

The Redis backend keeps the gateway's hot path free of database work. Its durable records
(``Reservation`` rows, for rebuilding the counters after Redis loses its data, and
``UsageEvent`` rows, what Celery turns into usage records and ledger charges) are handed to
this writer, which commits them from one thread per process, many requests per transaction:

- ``reserve`` queues the reservation row;
- ``settle`` queues the usage event (and the row's deletion); the settle script has already
  appended the same event to the Redis usage stream in the step that counted it, so a process
  killed before the commit loses nothing: any process's writer (and Celery's reconciliation)
  drains stream entries older than ``ORPHAN_AGE`` into the database;
- ``release`` queues the row's deletion.

A batch is whatever queued while the previous one committed (group commit; no timer), so an
idle gateway commits each request on its own and a busy one amortises a transaction over
hundreds. A reservation settled or released in the same batch is never written. After the
commit the batch's stream entries are deleted. A database failure keeps the batch and retries
with backoff (requests keep being served meanwhile; Redis holds the counters); the queue is
bounded by dropping reservation rows first (they only matter if Redis also loses its data).

``BILLING_USAGE_WRITE=inline`` bypasses this writer: each request commits its own rows before
its response, as one transaction per step (the strictest mode, and what the test suite runs,
inside its per-test transactions; the writer's own tests use real commits).

Inserts are idempotent: events whose request already has a usage record (posted meanwhile by
another drain) are skipped, and both tables are unique by request id (conflicts ignored).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from django.db import close_old_connections, connection, transaction

from billing.models import Reservation as ReservationRow
from billing.models import UsageEvent, UsageRecord

logger = logging.getLogger(__name__)

MAX_BATCH = 1000  # operations per transaction
MAX_PENDING = 200_000  # beyond this, queued reservation rows are dropped (Redis keeps the holds)
RETRY_MAX_S = 2.0  # backoff ceiling while the database is unreachable
ORPHAN_AGE_S = 10.0  # stream entries older than this belong to no live writer
ORPHAN_EVERY_S = 5.0  # how often a writer looks for them


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError


def event_payload(row: dict[str, Any]) -> bytes:
    """A usage event row (``base.usage_event_row``) as the stream's JSON."""
    return orjson.dumps(row, default=_json_default)


def event_from_payload(raw: str | bytes) -> dict[str, Any]:
    row = orjson.loads(raw)
    row["cost"] = Decimal(row["cost"])
    row["created_at"] = dt.datetime.fromisoformat(row["created_at"])
    return row


@dataclass(slots=True)
class _Op:
    kind: str  # "reserve" | "settle" | "release" | "flush" | "stop"
    request_id: str = ""
    row: dict[str, Any] | None = None  # the Reservation or UsageEvent fields
    stream_id: str | None = None
    done: Callable[[], None] | None = None  # called (from the writer thread) after the commit


@dataclass(slots=True)
class _Batch:
    reserve: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete: set[str] = field(default_factory=set)
    stream_ids: list[str] = field(default_factory=list)
    done: list[Callable[[], None]] = field(default_factory=list)
    stop: bool = False

    def add(self, op: _Op) -> None:
        if op.kind == "stop":
            self.stop = True
        if op.kind == "reserve":
            assert op.row is not None
            self.reserve[op.request_id] = op.row
        elif op.kind in ("settle", "release"):
            # Settled or released before its row was written: the row never needs to exist.
            if self.reserve.pop(op.request_id, None) is None:
                self.delete.add(op.request_id)
            if op.row is not None:
                self.events[op.request_id] = op.row
            if op.stream_id:
                self.stream_ids.append(op.stream_id)
        if op.done is not None:
            self.done.append(op.done)

    def empty(self) -> bool:
        return not (self.reserve or self.events or self.delete or self.stream_ids)


def commit_rows(
    *,
    reserve: list[dict[str, Any]] = (),  # type: ignore[assignment]
    events: list[dict[str, Any]] = (),  # type: ignore[assignment]
    delete: set[str] | frozenset[str] = frozenset(),
) -> int:
    """One transaction: insert reservation rows, insert usage events (skipping requests that
    already have a usage record), delete finished reservations' rows. Returns events written."""
    with transaction.atomic():
        if reserve:
            ReservationRow.objects.bulk_create(
                [ReservationRow(**row) for row in reserve], ignore_conflicts=True
            )
        written = 0
        if events:
            ids = [row["request_id"] for row in events]
            posted = set(
                UsageRecord.objects.filter(request_id__in=ids).values_list("request_id", flat=True)
            )
            fresh = [UsageEvent(**row) for row in events if row["request_id"] not in posted]
            UsageEvent.objects.bulk_create(fresh, ignore_conflicts=True)
            written = len(fresh)
        if delete:
            ReservationRow.objects.filter(request_id__in=list(delete)).delete()
    return written


class UsageWriter:
    """One per process (see :func:`get_writer`). ``stream`` deletes and reads the Redis usage
    stream: an object with ``xdel(ids)`` and ``orphans(older_than_s) -> [(id, row)]``."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()
        self._orphans_at = time.monotonic() + ORPHAN_EVERY_S
        # figures (tests, metrics, the bench)
        self.batches = 0
        self.events_written = 0
        self.failures = 0
        self.dropped = 0

    # -- producers (any thread, any event loop) -----------------------------------------------
    def reserve(self, row: dict[str, Any], done: Callable[[], None] | None = None) -> None:
        with self._pending_lock:
            over = self._pending >= MAX_PENDING
        if over:
            self.dropped += 1
            if done is not None:
                done()
            return
        self._put(_Op("reserve", row["request_id"], row, done=done))

    def settle(
        self,
        request_id: str,
        event: dict[str, Any],
        stream_id: str | None,
        done: Callable[[], None] | None = None,
    ) -> None:
        self._put(_Op("settle", request_id, event, stream_id, done))

    def release(self, request_id: str, done: Callable[[], None] | None = None) -> None:
        self._put(_Op("release", request_id, done=done))

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Block until everything queued before the call is committed (or ``timeout``)."""
        if (self._thread is None or not self._thread.is_alive()) and self._queue.empty():
            return True
        event = threading.Event()
        self._put(_Op("flush", done=event.set))
        return event.wait(timeout)

    def stop(self, timeout: float = 10.0) -> bool:
        """Commit what is queued, close the thread's database connection and end the thread
        (tests; a new operation starts a new thread)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        self._put(_Op("stop"))
        thread.join(timeout)
        return not thread.is_alive()

    async def aflush(self, timeout: float = 10.0) -> bool:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put(_Op("flush", done=_resolver(loop, future)))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def pending(self) -> int:
        return self._pending

    # -- the thread ------------------------------------------------------------------------------
    def _put(self, op: _Op) -> None:
        if self._pid != os.getpid():  # forked: the parent's thread does not exist here
            self.__init__(self.stream)  # type: ignore[misc]
        with self._pending_lock:
            self._pending += 1
        self._queue.put(op)
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="billing-usage-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        batch = _Batch()
        taken = 0
        delay = 0.05
        while True:
            if batch.empty() and not batch.done and not batch.stop:
                try:
                    op = self._queue.get(timeout=ORPHAN_EVERY_S)
                except queue.Empty:
                    self._maybe_drain_orphans()
                    continue
                batch.add(op)
                taken += 1
            while taken < MAX_BATCH:  # whatever queued meanwhile joins this transaction
                try:
                    batch.add(self._queue.get_nowait())
                except queue.Empty:
                    break
                taken += 1
            try:
                self._commit(batch)
            except Exception as exc:  # the database is unreachable: keep the batch, retry
                self.failures += 1
                logger.warning(
                    "usage writer: database write failed; retrying",
                    extra={"fields": {"error": type(exc).__name__, "pending": self._pending}},
                )
                _reset_connection()
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                self._shed()
                continue
            delay = 0.05
            for done in batch.done:
                done()
            with self._pending_lock:
                self._pending -= taken
            if batch.stop:
                with self._start_lock:
                    self._thread = None
                _reset_connection()
                return
            batch = _Batch()
            taken = 0
            self._maybe_drain_orphans()

    def _commit(self, batch: _Batch) -> None:
        if batch.reserve or batch.events or batch.delete:
            self.events_written += commit_rows(
                reserve=list(batch.reserve.values()),
                events=list(batch.events.values()),
                delete=batch.delete,
            )
            self.batches += 1
        if batch.stream_ids and self.stream is not None:
            ids, batch.stream_ids = batch.stream_ids, []
            try:
                self.stream.xdel(ids)
            except Exception as exc:  # left in the stream: drained again later, idempotently
                logger.warning(
                    "usage writer: stream entries not deleted",
                    extra={"fields": {"error": type(exc).__name__, "entries": len(ids)}},
                )

    def _shed(self) -> None:
        """While the database is down, keep memory bounded: drop queued reservation rows."""
        with self._pending_lock:
            over = self._pending >= MAX_PENDING
        if not over:
            return
        kept: list[_Op] = []
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op.kind == "reserve":
                self.dropped += 1
                with self._pending_lock:
                    self._pending -= 1
                if op.done is not None:
                    op.done()
            else:
                kept.append(op)
        for op in kept:
            self._queue.put(op)

    def _maybe_drain_orphans(self) -> None:
        now = time.monotonic()
        if self.stream is None or now < self._orphans_at:
            return
        self._orphans_at = now + ORPHAN_EVERY_S
        try:
            drain_orphans(self.stream)
        except Exception as exc:
            _reset_connection()
            logger.warning(
                "usage writer: orphan drain failed",
                extra={"fields": {"error": type(exc).__name__}},
            )


def drain_orphans(stream: Any, *, older_than_s: float | None = None, limit: int = 5000) -> int:
    """Stream entries no live writer committed (their process died between settle and commit):
    write their usage events and delete their rows, then the entries. Returns entries drained.
    ``older_than_s`` defaults to ``ORPHAN_AGE_S``."""
    if older_than_s is None:
        older_than_s = ORPHAN_AGE_S
    drained = 0
    while drained < limit:
        entries = stream.orphans(older_than_s, count=500)
        if not entries:
            break
        rows = [row for _, row in entries]
        commit_rows(events=rows, delete={row["request_id"] for row in rows})
        stream.xdel([entry_id for entry_id, _ in entries])
        drained += len(entries)
    if drained:
        logger.info("usage writer: drained orphaned usage events", extra={"fields": {"n": drained}})
    return drained


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Callable[[], None]:
    def done() -> None:
        if loop.is_closed():
            return
        loop.call_soon_threadsafe(_set, future)

    return done


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reset_connection() -> None:
    """Drop the thread's (possibly broken) connection; the next batch opens a new one."""
    with contextlib.suppress(Exception):
        connection.close()
    with contextlib.suppress(Exception):
        close_old_connections()


_writers: dict[str, UsageWriter] = {}
_writer_lock = threading.Lock()


def get_writer(stream: Any = None) -> UsageWriter:
    """The process's writer for ``stream`` (one per usage stream key; normally one)."""
    name = getattr(stream, "key", "")
    writer = _writers.get(name)
    if writer is None:
        with _writer_lock:
            writer = _writers.get(name)
            if writer is None:
                writer = _writers[name] = UsageWriter(stream)
                atexit.register(writer.flush, 5.0)
    return writer


def flush_started(timeout: float = 10.0) -> bool:
    """Flush the process's writers, if any was used (server shutdown)."""
    return all([writer.flush(timeout) for writer in list(_writers.values())])


def reset_writers() -> None:
    """Commit, stop and forget the process's writers (tests)."""
    for writer in list(_writers.values()):
        writer.stop(5.0)
    _writers.clear()
