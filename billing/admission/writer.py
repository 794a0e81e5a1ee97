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

A batch is whatever queued while the previous one committed, plus what queues within
``BILLING_USAGE_LINGER_S`` (50 ms) of the batch's first operation (a flush commits at once): a
busy gateway amortises a transaction, its statements and the stream deletion over tens to
hundreds of requests instead of the few that queued during one commit (about one transaction
per worker per 50 ms, whatever the load), and an idle one commits each request 50 ms late.
Nothing waits for this: the counters and the usage stream entry were written by the settle.
A hold's row is written only once it has been open ``HOLD_WRITE_AFTER_S`` (1 s): most
requests settle before that and never cost a reservation row; the rows exist for the long
calls a Redis data loss would otherwise forget (a rebuild counts the holds it finds). After the
commit the batch's stream entries are deleted. A database failure keeps the batch and retries
with backoff (requests keep being served meanwhile; Redis holds the counters); the queue is
bounded by dropping reservation rows first (they only matter if Redis also loses its data).

``BILLING_USAGE_WRITE=inline`` bypasses this writer: each request commits its own rows before
its response, as one transaction per step (the strictest mode, and what the test suite runs,
inside its per-test transactions; the writer's own tests use real commits).

Inserts are idempotent: both tables are unique by request id (conflicts ignored), the orphan
drain skips requests that already have a usage record, and posting charges a request once
whatever the number of its events (``billing.services.usage_events_post``).
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
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import JSONField

from billing.models import Reservation as ReservationRow
from billing.models import UsageEvent, UsageRecord

logger = logging.getLogger(__name__)

MAX_BATCH = 1000  # operations per transaction
MAX_PENDING = 200_000  # beyond this many unwritten holds the oldest are dropped (Redis has them)
HOLD_WRITE_AFTER_S = 1.0  # a hold still open this long gets its Reservation row
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
    all_holds: bool = False  # a flush: write every open hold now, however young
    stop: bool = False

    def empty(self) -> bool:
        return not (self.reserve or self.events or self.delete or self.stream_ids)


def commit_rows(
    *,
    reserve: list[dict[str, Any]] = (),  # type: ignore[assignment]
    events: list[dict[str, Any]] = (),  # type: ignore[assignment]
    delete: set[str] | frozenset[str] = frozenset(),
    skip_posted: bool = False,
) -> int:
    """One transaction: insert reservation rows, insert usage events, delete finished
    reservations' rows. Returns events written. ``skip_posted`` (the orphan drain, which may
    meet entries a live writer committed and Celery posted since) leaves out requests that
    already have a usage record; posting skips those anyway, so the writer's own batches do
    not pay for the check."""
    with transaction.atomic():
        if reserve:
            _insert(ReservationRow, reserve)
        written = 0
        if events:
            posted: set[str] = set()
            if skip_posted:
                ids = [row["request_id"] for row in events]
                posted = set(
                    UsageRecord.objects.filter(request_id__in=ids).values_list(
                        "request_id", flat=True
                    )
                )
            fresh = [row for row in events if row["request_id"] not in posted]
            _insert(UsageEvent, fresh)
            written = len(fresh)
        if delete:
            ReservationRow.objects.filter(request_id__in=list(delete)).delete()
    return written


def _insert(model: type[Any], rows: list[dict[str, Any]]) -> None:
    """``INSERT ... ON CONFLICT (request_id) DO NOTHING`` of field-name dicts. On PostgreSQL one
    hand-built multi-row statement (the ORM's per-row field preparation cost about a millisecond
    of this thread's CPU per request, which the event loop of the same process then waits for);
    elsewhere ``bulk_create``."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_create([model(**row) for row in rows], ignore_conflicts=True)
        return
    names = list(rows[0])
    fields = [model._meta.get_field(name) for name in names]
    json_at = [i for i, f in enumerate(fields) if isinstance(f, JSONField)]
    placeholder = "(" + ",".join("%s::jsonb" if i in json_at else "%s" for i in range(len(names)))
    placeholder += ")"
    columns = ",".join(connection.ops.quote_name(f.column) for f in fields)
    params: list[Any] = []
    for row in rows:
        values = [row[name] for name in names]
        for i in json_at:
            values[i] = orjson.dumps(values[i], default=_json_default).decode()
        params += values
    # identifiers from the model's metadata, every value a parameter
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({columns}) VALUES "  # noqa: S608
        + ",".join([placeholder] * len(rows))
        + " ON CONFLICT (request_id) DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


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
        # open holds not written yet (request id -> (queued at, row)), oldest first; and the
        # ones written (request id -> when), whose rows a settle must delete
        self._holds: dict[str, tuple[float, dict[str, Any]]] = {}
        self._written: dict[str, float] = {}
        # figures (tests, metrics, the bench)
        self.batches = 0
        self.events_written = 0
        self.failures = 0
        self.dropped = 0

    # -- producers (any thread, any event loop) -----------------------------------------------
    def reserve(self, row: dict[str, Any], done: Callable[[], None] | None = None) -> None:
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

    def _take(self, op: _Op, batch: _Batch) -> None:
        """Apply one operation to the batch being assembled (the writer thread only)."""
        if op.kind == "reserve":
            assert op.row is not None
            self._holds[op.request_id] = (time.monotonic(), op.row)
        elif op.kind in ("settle", "release"):
            # Settled before its row was written (most requests): the row never exists.
            if self._holds.pop(op.request_id, None) is None and self._written.pop(
                op.request_id, None
            ):
                batch.delete.add(op.request_id)
            if op.row is not None:
                batch.events[op.request_id] = op.row
            if op.stream_id:
                batch.stream_ids.append(op.stream_id)
        elif op.kind == "flush":
            batch.all_holds = True
        elif op.kind == "stop":
            batch.all_holds = batch.stop = True
        if op.done is not None:
            batch.done.append(op.done)

    def _due_holds(self, batch: _Batch) -> None:
        """Holds open longer than ``HOLD_WRITE_AFTER_S`` (or all, for a flush) join the batch."""
        now = time.monotonic()
        while len(self._holds) > MAX_PENDING:  # the database has been down a long time
            self._holds.pop(next(iter(self._holds)))
            self.dropped += 1
        due = []
        for rid, (queued, _) in self._holds.items():  # oldest first: stop at the first too young
            if not batch.all_holds and now - queued < HOLD_WRITE_AFTER_S:
                break
            due.append(rid)
        for rid in due:
            batch.reserve[rid] = self._holds.pop(rid)[1]
            self._written[rid] = now
        if len(self._written) > MAX_PENDING:  # rows reconciliation removed long ago
            cutoff = now - 2 * settings.BILLING_RESERVATION_TTL
            self._written = {rid: t for rid, t in self._written.items() if t >= cutoff}

    def _wait(self) -> float:
        """How long the idle thread may sleep: until the oldest hold is due, at most the
        orphan check interval."""
        if not self._holds:
            return ORPHAN_EVERY_S
        queued, _ = next(iter(self._holds.values()))
        return max(0.001, min(ORPHAN_EVERY_S, queued + HOLD_WRITE_AFTER_S - time.monotonic()))

    def _run(self) -> None:
        batch = _Batch()
        taken = 0
        delay = 0.05
        while True:
            if batch.empty() and not batch.done and not batch.stop:
                try:
                    op = self._queue.get(timeout=self._wait())
                except queue.Empty:
                    op = None
                if op is not None:
                    self._take(op, batch)
                    taken += 1
            if taken and not (batch.done or batch.stop):
                # the linger: one sleep, not a wake-up per queued operation (each would hand
                # the GIL back and forth with the event loop that queues them)
                time.sleep(settings.BILLING_USAGE_LINGER_S)
            while taken < MAX_BATCH:  # whatever queued meanwhile joins this transaction
                try:
                    self._take(self._queue.get_nowait(), batch)
                except queue.Empty:
                    break
                taken += 1
            self._due_holds(batch)
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
        commit_rows(events=rows, delete={row["request_id"] for row in rows}, skip_posted=True)
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
