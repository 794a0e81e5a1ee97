"""The Redis admission backend (production): one Lua script per reserve, one per settle.

Counters are integer nano-dollars (Redis integers; Lua compares them as doubles, exact below
2**53 nano = $9 million per counter). Reservations round up, limits and balances round down.

Keys (``P`` = settings.BILLING_REDIS_PREFIX, ``{oN}`` = the organization's hash tag)::

    P:{oN}:epoch               counters are built (absent after a restart: rebuild first)
    P:{oN}:bal                 available balance = balance - unposted usage - open holds
    P:{oN}:bud:<id>:<start>    a budget's spend + holds in the period starting at <start>
    P:{oN}:rl:<key>:<minute>:r / :t   requests / tokens of a key in one minute
    P:{oN}:res:<request id>    an open reservation (amount, tokens, counters it holds)
    P:{oN}:open                the organization's open reservations
    P:deadlines                every open reservation by deadline (reconciliation)

Durability (``BILLING_USAGE_WRITE``, default ``behind``): nothing on the request path waits
for the database. The reserve script's hold is queued for the database as a ``Reservation``
row; the settle script counts the usage and appends the usage event to the usage stream
(``P:usage``) in one step, and the event (with the row's deletion) is queued too. The
process's :mod:`billing.admission.writer` commits the queue in batches and then deletes the
stream entries; entries a dead process left behind are drained by any writer (and by Celery's
reconciliation). The database therefore holds what a rebuild needs (posted spend in
``BudgetUsage.spent``, unposted usage events, open reservations) up to the last few
milliseconds of writes, and the stream holds those milliseconds while Redis keeps its data.
``inline`` is the previous, strictest order: the reservation row is written while the provider
answers, and settle commits the usage event to the database before the settle script runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import math
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import redis as redis_sync
import redis.asyncio as redis_async
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing.admission import heartbeat
from billing.admission import writer as usage_writer
from billing.admission.base import (
    LAYER_ORDER,
    AdmissionContext,
    BudgetInfo,
    HoldRequest,
    Reservation,
    UsageEventData,
    budgets_load,
    budgets_version,
    check_open,
    deadline_for,
    reservation_insert,
    reservation_row,
    settle_rows,
    usage_event_from_progress,
    usage_event_row,
)
from billing.admission.heartbeat import HEARTBEAT_TTL
from billing.errors import AdmissionUnavailable, BalanceExhausted, BudgetExceeded, RateLimited
from billing.models import (
    BillingAccount,
    Budget,
    BudgetPeriod,
    BudgetScope,
    BudgetUsage,
    UsageEvent,
    UsageRecord,
)
from billing.models import Reservation as ReservationRow
from billing.periods import period_bounds
from megarouter import shared_cache
from orgs.models import Organization

logger = logging.getLogger(__name__)

# Redis unreachable after the usage event is in the database: the hold stays in Redis with its
# deadline, and reconciliation settles it from the database exactly as after a crash, so the
# answer the client already has is never turned into an error.
_COUNTER_ERRORS = shared_cache.ERRORS

LUA_DIR = Path(__file__).with_name("lua")
NANO = Decimal(10) ** 9
REBUILD_WAIT = 3.0  # seconds a reserve waits for another process's rebuild
MAX_CONNECTIONS = 50  # per process and event loop; callers wait for a free connection


def nano_ceil(amount: Decimal) -> int:
    return int((amount * NANO).to_integral_value(rounding=ROUND_CEILING))


def nano_floor(amount: Decimal) -> int:
    return int((amount * NANO).to_integral_value(rounding=ROUND_FLOOR))


def _script(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


def budget_definition(b: BudgetInfo) -> str:
    """A budget as the reserve script reads it: scope|scope id|period|limit (nano)|mode; a tag
    budget's "scope id" is its tag ("key=value", which holds no "|")."""
    sid = b.tag if b.scope == BudgetScope.TAG else b.scope_id
    return f"{b.scope}|{sid}|{b.period}|{nano_floor(b.limit_usd)}|{b.mode}"


def _scope_ids(ctx: AdmissionContext) -> tuple[int | None, ...]:
    """The request's department, team, project, member and key ids (the reserve script's
    ARGV order after the organization)."""
    return (ctx.department_id, ctx.team_id, ctx.project_id, ctx.member_id, ctx.key_id)


_PERIODS = (BudgetPeriod.DAILY, BudgetPeriod.WEEKLY, BudgetPeriod.MONTHLY)
_period_cache: dict[str, tuple[float, list[tuple[int, int]]]] = {}


def period_args(time_zone: str, now: dt.datetime) -> list[str]:
    """The current daily, weekly and monthly periods in ``time_zone``: each start (unix
    seconds, the counter key's suffix) and a counter ttl (the period's end plus a day).
    Computed once per zone until the nearest period ends."""
    ts = now.timestamp()
    cached = _period_cache.get(time_zone)
    if cached is None or ts >= cached[0]:
        bounds = [period_bounds(p, now, time_zone) for p in _PERIODS]
        pairs = [(int(start.timestamp()), int(end.timestamp())) for start, end in bounds if end]
        cached = (min(end for _, end in pairs), pairs)
        _period_cache[time_zone] = cached
    out: list[str] = []
    for start, end in cached[1]:
        out += [str(start), str(int(end - ts) + 86400)]
    return out


def _raise_refusal(
    result: list[Any], ctx: AdmissionContext, epoch_seconds: float, request_id: str
) -> None:
    status = result[0]
    if status == "ok":
        return
    if status == "rate":
        retry = max(1, math.ceil(60 - epoch_seconds % 60))  # the minute window's end
        raise RateLimited(limit=result[1], retry_after=retry)
    if status == "budget":
        raw = result[3] if len(result) > 3 else ""
        raw = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        scope_id = int(raw) if raw.isdigit() else 0  # a tag budget's is its tag
        raise BudgetExceeded(layer=result[2], scope_id=scope_id, budget_id=int(result[1]))
    if status == "balance":
        raise BalanceExhausted(organization_id=ctx.organization_id)
    if status == "duplicate":
        raise ValueError(f"request id {request_id} already holds a reservation")
    raise AdmissionUnavailable()


def _layer_then_id(item: str) -> tuple[int, int]:
    budget_id, _start, scope = item.split("|")
    return LAYER_ORDER.get(scope, 99), int(budget_id)


class Keys:
    def __init__(self, prefix: str, organization_id: int) -> None:
        self.base = f"{prefix}:{{o{organization_id}}}"
        self.epoch = f"{self.base}:epoch"
        self.bal = f"{self.base}:bal"
        self.open = f"{self.base}:open"
        self.lock = f"{self.base}:rebuild"
        self.defs = f"{self.base}:defs"
        self.defs_version = f"{self.base}:defs-v"
        self.budget_prefix = f"{self.base}:bud:"
        self.deadlines = f"{prefix}:deadlines"
        self.res_prefix = f"{self.base}:res:"

    def res(self, request_id: str) -> str:
        return f"{self.res_prefix}{request_id}"

    def budget(self, budget_id: int, start: dt.datetime) -> str:
        return f"{self.budget_prefix}{budget_id}:{int(start.timestamp())}"

    def rate(self, key_id: int, minute: int) -> tuple[str, str]:
        return f"{self.base}:rl:{key_id}:{minute}:r", f"{self.base}:rl:{key_id}:{minute}:t"


class RedisBackend:
    name = "redis"

    def __init__(self, url: str | None = None, prefix: str | None = None) -> None:
        self.url = url or settings.REDIS_URL
        self.prefix = prefix or settings.BILLING_REDIS_PREFIX
        self._sync: redis_sync.Redis | None = None
        self._async: weakref.WeakKeyDictionary[Any, redis_async.Redis] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._sources = {
            n: _script(n) for n in ("reserve", "settle", "rebuild", "credit", "defs", "progress")
        }
        self.rebuilds = 0  # for tests and metrics
        self.usage_stream = UsageStream(self)  # ``P:usage``, shared by every organization

    # -- clients -------------------------------------------------------------------------
    @property
    def sync(self) -> redis_sync.Redis:
        if self._sync is None:
            self._sync = redis_sync.Redis.from_url(self.url, decode_responses=True)
        return self._sync

    def _client(self) -> tuple[redis_async.Redis, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            pool = redis_async.BlockingConnectionPool.from_url(
                self.url, max_connections=MAX_CONNECTIONS, timeout=5, decode_responses=True
            )
            client = redis_async.Redis(connection_pool=pool)
            client.billing_scripts = {  # type: ignore[attr-defined]
                n: client.register_script(src) for n, src in self._sources.items()
            }
            self._async[loop] = client
        return client, client.billing_scripts  # type: ignore[attr-defined]

    def _sync_script(self, name: str) -> Any:
        return self.sync.register_script(self._sources[name])

    def keys(self, organization_id: int) -> Keys:
        return Keys(self.prefix, organization_id)

    # -- budget definitions (beside the counters, read by the reserve script) ----------------
    def budgets_changed(self, organization_id: int) -> None:
        """After a budget of the organization was created, changed or deleted (committed):
        its definitions in Redis become the database's, so the next admission of every
        process applies them. Budgets not yet enforced are marked as enforced from now."""
        version = budgets_version(organization_id)  # read first: the definitions are as new
        budgets = budgets_load(organization_id)
        k = self.keys(organization_id)
        args = [str(version)]
        for b in budgets:
            args += [str(b.id), budget_definition(b)]
        self._sync_script("defs")(keys=[k.defs, k.defs_version], args=args)
        Budget.objects.filter(organization_id=organization_id, enforced_at__isnull=True).update(
            enforced_at=timezone.now()
        )

    def budget_definitions_sync(self) -> int:
        """Push the definitions of every organization whose version in Redis is behind the
        database's (a push that failed after its change committed). Returns how many."""
        rows = list(
            BillingAccount.objects.filter(budgets_version__gt=0).values_list(
                "organization_id", "budgets_version"
            )
        )
        pushed = 0
        for start in range(0, len(rows), 1000):
            batch = rows[start : start + 1000]
            held = self.sync.mget([self.keys(org).defs_version for org, _ in batch])
            for (org, version), in_redis in zip(batch, held, strict=True):
                if int(in_redis or 0) < version:
                    self.budgets_changed(org)
                    pushed += 1
        return pushed

    # -- reserve ---------------------------------------------------------------------------
    async def reserve(
        self, request_id: str, ctx: AdmissionContext, hold: HoldRequest
    ) -> Reservation:
        if hold.input_amount < 0 or hold.output_price < 0 or hold.output_tokens < 0:
            raise ValueError("amounts and tokens cannot be negative")
        now = timezone.now()
        k = self.keys(ctx.organization_id)
        limited = ctx.key_id is not None and (
            ctx.rpm_limit is not None or ctx.tpm_limit is not None
        )
        epoch_seconds = now.timestamp()
        rate_r, rate_t = k.rate(ctx.key_id or 0, int(epoch_seconds // 60))
        deadline = deadline_for(now)
        keys = [k.epoch, k.bal, k.res(request_id), k.deadlines, k.open, rate_r, rate_t, k.defs]
        args = [
            str(nano_ceil(hold.input_amount)),
            format((hold.output_price * NANO).normalize(), "f"),
            str(hold.output_tokens),
            "1" if hold.exact else "0",
            str(hold.min_output),
            str(hold.input_tokens),
            str(ctx.rpm_limit if limited and ctx.rpm_limit is not None else -1),
            str(ctx.tpm_limit if limited and ctx.tpm_limit is not None else -1),
            str(int(deadline.timestamp())),
            f"{ctx.organization_id}|{request_id}",
            "120",
            k.budget_prefix,
            heartbeat.current(),
            str(int(epoch_seconds * 1000)),
            "",  # the organization scope applies to every request of the organization
            *(str(i) if i is not None else "" for i in _scope_ids(ctx)),
            *period_args(ctx.time_zone, now),
            *ctx.tags,  # ARGV[27..]: tag budgets apply by them
        ]
        client, scripts = self._client()
        result = await scripts["reserve"](keys=keys, args=args, client=client)
        if result[0] == "rebuild":
            await self._await_rebuild(ctx.organization_id)
            result = await scripts["reserve"](keys=keys, args=args, client=client)
            if result[0] == "rebuild":
                raise AdmissionUnavailable()
        _raise_refusal(result, ctx, epoch_seconds, request_id)
        _, _epoch, out_tokens, amount_nano, *matched = result
        periods = []
        counter_keys = []
        # in layer order, then by id (as the database backend lists them)
        for item in sorted(matched, key=_layer_then_id):
            budget_id, start, scope = item.split("|")
            start_at = dt.datetime.fromtimestamp(int(start), tz=dt.UTC)
            periods.append((int(budget_id), start_at.isoformat(), scope))
            counter_keys.append(k.budget(int(budget_id), start_at))
        out = int(out_tokens)
        res = Reservation(
            request_id=request_id,
            ctx=ctx,
            amount=Decimal(int(amount_nano)) / NANO,
            tokens=hold.input_tokens + out,
            backend=self.name,
            created_at=now,
            deadline=deadline,
            budgets=tuple(periods),
            rate_window=now.replace(second=0, microsecond=0) if limited else None,
            output_tokens=out,
        )
        res.extra["counter_keys"] = counter_keys
        res.extra["rate_key"] = rate_t if limited else ""
        heartbeat.start(self)
        if self.write_behind:
            # Durable copy, committed by the writer's next batch (nothing here waits for it).
            self.writer().reserve(reservation_row(res))
        else:
            # Durable copy, written while the provider answers; settle / release await it.
            res.extra["persist"] = asyncio.ensure_future(
                sync_to_async(reservation_insert, thread_sensitive=True)(res)
            )
        return res

    async def _await_rebuild(self, organization_id: int) -> None:
        deadline = time.monotonic() + REBUILD_WAIT
        client, _ = self._client()
        epoch = self.keys(organization_id).epoch
        while time.monotonic() < deadline:
            if await client.exists(epoch):  # built meanwhile (by us or another process)
                return
            built = await sync_to_async(self.rebuild_sync, thread_sensitive=True)(organization_id)
            if built:
                return
            await asyncio.sleep(0.05)  # another process holds the rebuild lock

    # -- settle / release ------------------------------------------------------------------
    async def _persisted(self, res: Reservation) -> None:
        task = res.extra.get("persist")
        if task is None:
            return
        if task.done() and task.cancelled():  # its event loop ended before it ran
            res.extra["persist_failed"] = True
            return
        try:
            await task
        except Exception:  # the Redis hold is still reconciled by its deadline
            res.extra["persist_failed"] = True

    def _settle_keys(self, res: Reservation, *, stream: bool = False) -> list[str]:
        k = self.keys(res.ctx.organization_id)
        return [
            k.epoch,
            k.bal,
            k.res(res.request_id),
            k.deadlines,
            k.open,
            res.extra.get("rate_key", ""),
            self.usage_stream.key if stream else "",
            *res.extra.get("counter_keys", []),
        ]

    @property
    def write_behind(self) -> bool:
        return settings.BILLING_USAGE_WRITE == "behind"

    def writer(self) -> usage_writer.UsageWriter:
        return usage_writer.get_writer(self.usage_stream)

    async def flush_writes(self) -> None:
        """Wait until the rows queued so far are in the database (tests, tools)."""
        if self.write_behind:
            await self.writer().aflush()

    async def settle(
        self, reservation: Reservation, actual_cost: Decimal, usage_event: UsageEventData
    ) -> None:
        check_open(reservation)
        tokens = usage_event.tokens_in + usage_event.tokens_out
        if not self.write_behind:
            await self._persisted(reservation)
            await sync_to_async(settle_rows, thread_sensitive=True)(
                reservation, actual_cost, usage_event, db_held=False
            )
            await self.settle_counters(reservation, actual_cost, tokens)
            return
        row = usage_event_row(reservation, actual_cost, usage_event, db_held=False)
        counted = await self.settle_counters(
            reservation, actual_cost, tokens, event=usage_writer.event_payload(row)
        )
        stream_id = counted if isinstance(counted, str) else None
        self.writer().settle(reservation.request_id, row, stream_id)

    async def settle_counters(
        self, res: Reservation, actual_cost: Decimal, tokens: int, *, event: bytes = b""
    ) -> bool | str:
        """The Redis half of settle. While the organization's counters are being rebuilt it
        waits for them, so the rebuild and this settle never both count (or both miss) the
        request. True when counted; with ``event``, the settle script also appends it to the
        usage stream and this returns the entry id instead. False when the counters could not
        be reached in time: the usage event reaches the database anyway, and reconciliation
        (or the next rebuild) counts it from there."""
        client, scripts = self._client()
        args = [
            str(nano_ceil(actual_cost)),
            f"{res.ctx.organization_id}|{res.request_id}",
            str(tokens),
            "settle",
            event,
        ]
        keys = self._settle_keys(res, stream=bool(event))
        deadline = time.monotonic() + REBUILD_WAIT
        while True:
            try:
                done = await scripts["settle"](keys=keys, args=args, client=client)
            except _COUNTER_ERRORS as exc:
                _counters_unreachable("settle", res, exc)
                return False
            if isinstance(done, str):
                return done  # the stream entry id
            if int(done) != -1:
                return True
            if time.monotonic() >= deadline:
                return False
            await self._await_rebuild(res.ctx.organization_id)

    async def release(self, reservation: Reservation) -> None:
        check_open(reservation)
        if self.write_behind:
            self.writer().release(reservation.request_id)
        else:
            await self._persisted(reservation)
            await sync_to_async(_row_delete, thread_sensitive=True)(reservation.request_id)
        client, scripts = self._client()
        try:
            await scripts["settle"](
                keys=self._settle_keys(reservation),
                args=[
                    "0",
                    f"{reservation.ctx.organization_id}|{reservation.request_id}",
                    "0",
                    "release",
                    "",
                ],
                client=client,
            )
        except _COUNTER_ERRORS as exc:
            _counters_unreachable("release", reservation, exc)

    # -- balance changes ---------------------------------------------------------------------
    def balance_changed(self, organization_id: int, delta: Decimal) -> None:
        k = self.keys(organization_id)
        nano = nano_floor(delta) if delta > 0 else -nano_ceil(-delta)
        self._sync_script("credit")(keys=[k.epoch, k.bal], args=[str(nano)])

    # -- rebuild -------------------------------------------------------------------------------
    def invalidate(self, organization_id: int) -> None:
        """Drop the organization's epoch: the next reserve rebuilds its counters."""
        self.sync.delete(self.keys(organization_id).epoch)

    def rebuild_sync(self, organization_id: int, *, force: bool = False) -> bool:
        """Recompute the organization's counters from the database. False when another process
        holds the rebuild lock."""
        k = self.keys(organization_id)
        token = uuid.uuid4().hex
        if not self.sync.set(k.lock, token, nx=True, px=30_000):
            return False
        try:
            if not force and self.sync.exists(k.epoch):
                return True  # another caller rebuilt while we waited for the lock

            defs_version = budgets_version(organization_id)  # before the read, as above
            payload = self.snapshot(organization_id)
            payload["epoch"] = uuid.uuid4().hex
            payload["defs_version"] = defs_version
            self._sync_script("rebuild")(
                keys=[k.epoch, k.bal, k.open, k.deadlines, k.defs, k.defs_version],
                args=[json.dumps(payload)],
            )
            self.rebuilds += 1
            Budget.objects.filter(organization_id=organization_id, enforced_at__isnull=True).update(
                enforced_at=timezone.now()
            )
            return True
        finally:
            if self.sync.get(k.lock) == token:
                self.sync.delete(k.lock)

    def snapshot(self, organization_id: int) -> dict[str, Any]:
        """What the counters must hold, computed from one consistent database read.

        Steps: read the organization's budgets, posted spend, unposted usage events, open
        reservations and balance in one transaction (``_counter_source``); add the events and
        holds to each budget's current period (``_budget_use``); list the events as settled
        and the reservations as open holds (``_snapshot_reservations``); each budget's counter
        with its ttl (``_budget_counters``); the balance, less every event and hold.
        """
        k = self.keys(organization_id)
        now = timezone.now()
        source = _counter_source(organization_id, now)
        used = _budget_use(source)
        pending = sum(
            itertools.chain(
                (cost for _, cost, _ in source.events), (r.amount for r in source.rows)
            ),
            Decimal(0),
        )
        return {
            "balance": str(nano_floor(source.balance) - nano_ceil(pending)),
            "defs": {str(b.id): budget_definition(b) for b in source.budgets},
            "counters": _budget_counters(k, source, used, now) or {},
            "reservations": _snapshot_reservations(k, organization_id, source),
            "hash_prefix": k.res_prefix,
        }

    def counters_read(self, organization_id: int) -> dict[str, Any]:
        """The organization's live counters (tests and the console)."""
        k = self.keys(organization_id)
        found = {}
        for key in self.sync.scan_iter(match=f"{k.base}:bud:*", count=500):
            found[key] = self.sync.get(key)
        return {"epoch": self.sync.get(k.epoch), "balance": self.sync.get(k.bal), "budgets": found}

    # -- liveness and stream progress -----------------------------------------------------------
    def heartbeat_sync(self, process: str) -> None:
        self.sync.set(f"{self.prefix}:proc:{process}", "1", ex=HEARTBEAT_TTL)

    async def progress(
        self, reservation: Reservation, output_tokens: int, bill: dict[str, Any] | None
    ) -> None:
        """Checkpoint a stream's relayed output on its hold (``bill`` the first time). Raises
        when Redis cannot be reached (the admission service logs it)."""
        client, scripts = self._client()
        k = self.keys(reservation.ctx.organization_id)
        terms = json.dumps(bill, default=str) if bill else ""
        await scripts["progress"](
            keys=[k.res(reservation.request_id)], args=[str(output_tokens), terms], client=client
        )

    # -- reconciliation -------------------------------------------------------------------------
    def reconcile_sync(self, *, now: dt.datetime | None = None) -> dict[str, int]:
        """Close the holds nobody will finish: past their deadline, or made by a process whose
        heartbeat stopped (``HEARTBEAT_TTL``): settle them in Redis when their usage event
        reached the database, charge what a stream relayed when it checkpointed, release them
        otherwise."""
        now = now or timezone.now()
        settled = released = 0
        # usage events a dead process appended to the stream but never committed
        usage_writer.drain_orphans(self.usage_stream)
        for member, held in self._abandoned(now):
            outcome = self._close(member, held)
            settled += outcome == "settled"
            released += outcome == "released"
        return {"settled": settled, "released": released}

    def _abandoned(self, now: dt.datetime) -> list[tuple[str, dict[str, str]]]:
        """(member, hold) of every hold past its deadline or of a dead process."""
        cutoff = now.timestamp()
        members = self.sync.zrange(f"{self.prefix}:deadlines", 0, 9999, withscores=True)
        if not members:
            return []
        pipe = self.sync.pipeline(transaction=False)
        for member, _ in members:
            org_text, request_id = member.split("|", 1)
            pipe.hgetall(self.keys(int(org_text)).res(request_id))
        holds = pipe.execute()
        processes = sorted({h.get("proc", "") for h in holds if h.get("proc")})
        alive = dict(
            zip(
                processes,
                self.sync.mget([f"{self.prefix}:proc:{p}" for p in processes]) if processes else [],
                strict=True,
            )
        )
        out = []
        for (member, deadline), held in zip(members, holds, strict=True):
            age = cutoff - int(held.get("at", "0") or 0) / 1000
            dead = bool(held.get("proc")) and alive.get(held["proc"]) is None
            if deadline < cutoff or (dead and age > HEARTBEAT_TTL):
                out.append((member, held))
        return out

    def _close(self, member: str, held: dict[str, str]) -> str:
        org_text, request_id = member.split("|", 1)
        k = self.keys(int(org_text))
        cost = _recorded_cost(request_id)
        if cost is None and held.get("bill") and held.get("settled") != "1":
            cost = _usage_event_from_checkpoint(request_id, held)
        ReservationRow.objects.filter(request_id=request_id).delete()
        if not held:
            self.sync.zrem(k.deadlines, member)
            return ""
        keys = [k.epoch, k.bal, k.res(request_id), k.deadlines, k.open, held.get("rate", ""), ""]
        keys += [key for key in held.get("keys", "").split(" ") if key]
        args = (
            ["0", member, "0", "release", ""]
            if cost is None
            else [str(nano_ceil(cost)), member, held.get("tok", "0"), "reconcile", ""]
        )
        if not self._sync_script("settle")(keys=keys, args=args):
            return ""
        return "released" if cost is None else "settled"


@dataclass(frozen=True, slots=True)
class _CounterSource:
    """What an organization's counters are rebuilt from (one consistent database read)."""

    budgets: tuple[BudgetInfo, ...]
    bounds: dict[int, tuple[dt.datetime, dt.datetime | None]]  # budget id -> current period
    spent: dict[tuple[int, str], Decimal]  # (budget id, period start) -> posted spend
    events: list[tuple[str, Decimal, list[list[Any]]]]  # unposted usage events
    rows: list[ReservationRow]  # open reservations
    balance: Decimal


def _counter_source(organization_id: int, now: dt.datetime) -> _CounterSource:
    """Read the counters' inputs in one transaction (repeatable read on PostgreSQL when this
    is the outermost one)."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        tz = (
            Organization.objects.filter(pk=organization_id)
            .values_list("time_zone", flat=True)
            .first()
        ) or "UTC"
        budgets = budgets_load(organization_id)
        bounds = {b.id: period_bounds(b.period, now, tz) for b in budgets}
        spent = {
            (b, s.isoformat()): v
            for b, s, v in BudgetUsage.objects.filter(
                budget_id__in=list(bounds),
            ).values_list("budget_id", "period_start", "spent")
            if bounds[b][0] == s
        }
        events = list(
            UsageEvent.objects.filter(organization_id=organization_id).values_list(
                "request_id", "cost", "budget_periods"
            )
        )
        rows = list(ReservationRow.objects.filter(organization_id=organization_id))
        balance = (
            BillingAccount.objects.filter(organization_id=organization_id)
            .values_list("balance", flat=True)
            .first()
        ) or Decimal(0)
    return _CounterSource(budgets, bounds, spent, events, rows, balance)


def _budget_use(source: _CounterSource) -> dict[tuple[int, str], Decimal]:
    """Each budget's current period: posted spend, then unposted events, then open holds."""
    used: dict[tuple[int, str], Decimal] = {
        (b.id, source.bounds[b.id][0].isoformat()): Decimal(0) for b in source.budgets
    }
    for key, value in source.spent.items():
        used[key] += value
    for _request_id, cost, periods in source.events:
        for b, s in periods:
            if (b, s) in used:
                used[(b, s)] += cost
    for row in source.rows:
        for b, s in row.budget_periods:
            if (b, s) in used:
                used[(b, s)] += row.amount
    return used


def _snapshot_reservations(
    k: Keys, organization_id: int, source: _CounterSource
) -> list[dict[str, Any]]:
    """The reservation hashes: each unposted event's marked settled, then each open hold."""
    # counted here: its settle, if still to come, must not count it again
    reservations: list[dict[str, Any]] = [
        {"hash": k.res(request_id), "settled": "1"} for request_id, _, _ in source.events
    ]
    for row in source.rows:
        counter_keys = [k.budget(b, dt.datetime.fromisoformat(s)) for b, s in row.budget_periods]
        rate = ""
        if row.rate_window is not None and row.key_id is not None:
            rate = k.rate(row.key_id, int(row.rate_window.timestamp() // 60))[1]
        reservations.append(
            {
                "hash": k.res(row.request_id),
                "member": f"{organization_id}|{row.request_id}",
                "amt": str(nano_ceil(row.amount)),
                "tok": str(row.tokens),
                "keys": " ".join(counter_keys),
                "rate": rate,
                "deadline": str(int(row.deadline.timestamp())),
            }
        )
    return reservations


def _budget_counters(
    k: Keys, source: _CounterSource, used: dict[tuple[int, str], Decimal], now: dt.datetime
) -> dict[str, list[Any]]:
    """Each budget's counter key -> [its use in nano-dollars (rounded up), ttl seconds]."""
    counters: dict[str, list[Any]] = {}
    for b in source.budgets:
        start, end = source.bounds[b.id]
        ttl = int((end - now).total_seconds()) + 86400 if end else 0
        counters[k.budget(b.id, start)] = [str(nano_ceil(used[(b.id, start.isoformat())])), ttl]
    return counters


def _recorded_cost(request_id: str) -> Decimal | None:
    """The cost of a request whose usage event (or record) reached the database."""
    cost = UsageEvent.objects.filter(request_id=request_id).values_list("cost", flat=True).first()
    if cost is None:
        cost = (
            UsageRecord.objects.filter(request_id=request_id).values_list("cost", flat=True).first()
        )
    return cost


def _usage_event_from_checkpoint(request_id: str, held: dict[str, str]) -> Decimal:
    """A stream whose process died after relaying some output: its usage event, charged for
    the prompt estimate and the output its last checkpoint counted."""
    bill = json.loads(held["bill"])
    amount = Decimal(int(held.get("amt", "0") or 0)) / NANO
    return usage_event_from_progress(request_id, bill, int(held.get("out", "0") or 0), amount)


class UsageStream:
    """The Redis usage stream, as the writer uses it (sync client; the writer is a thread)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.key = f"{backend.prefix}:usage"

    def xdel(self, ids: list[str]) -> None:
        if ids:
            self.backend.sync.xdel(self.key, *ids)

    def orphans(self, older_than_s: float, *, count: int = 500) -> list[tuple[str, Any]]:
        """Entries older than ``older_than_s`` (stream ids start with their time in ms)."""
        cutoff = int((time.time() - older_than_s) * 1000)
        entries = self.backend.sync.xrange(self.key, "-", f"{cutoff}-18446744073709551615", count)
        out = []
        for entry_id, fields in entries:
            try:
                out.append((entry_id, usage_writer.event_from_payload(fields["e"])))
            except (KeyError, ValueError) as exc:  # not ours: drop it rather than loop on it
                logger.error(
                    "usage stream: unreadable entry dropped",
                    extra={"fields": {"entry": entry_id, "error": type(exc).__name__}},
                )
                self.backend.sync.xdel(self.key, entry_id)
        return out

    def length(self) -> int:
        return int(self.backend.sync.xlen(self.key))


def _row_delete(request_id: str) -> None:
    ReservationRow.objects.filter(request_id=request_id).delete()


def _counters_unreachable(operation: str, reservation: Reservation, exc: BaseException) -> None:
    logger.warning(
        "admission counters unreachable; reconciliation will finish this request",
        extra={
            "fields": {
                "operation": operation,
                "request_id": reservation.request_id,
                "error": type(exc).__name__,
            }
        },
    )
