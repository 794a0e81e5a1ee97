"""Live health per deployment, shared by every gateway process: EWMA time to first token, total
latency and tokens per second, an EWMA error rate, requests in flight, and the circuit
breaker's state (``routing.breaker`` gives it meaning).

Two backends with one behaviour (the same tests run against both):

- ``LocalHealth``: in-process (embedded mode, no Redis). Updates apply at once under a lock.
- ``RedisHealth``: one Redis hash (``<prefix>``), one field per deployment holding a packed
  record; every update is one Lua script applied atomically, so processes share the EWMAs and
  the breaker. Hot-path cost is kept tiny: successes are buffered in-process and flushed in one
  pipeline at most every ``flush_interval`` (failures, breaker trials and in-flight peaks flush
  at once, since the breaker must see them); reads come from an in-process view of the whole
  hash (one ``HGETALL``) refreshed at most every ``refresh_interval`` (0.25 s).

Times are wall-clock seconds (``time.time()``) so they mean the same in every process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.conf import settings

from megarouter import shared_cache

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half_open"}


@dataclass(frozen=True, slots=True)
class HealthConfig:
    alpha: float = 0.2  # EWMA weight of a new sample
    failures_to_open: int = 5  # consecutive failures that open the breaker
    error_rate_to_open: float = 0.5  # ... or this failure ratio over the window
    min_requests: int = 20  # ... once the window holds at least this many requests
    window_s: float = 30.0
    cooldown_s: float = 10.0  # open -> half-open after this long
    trial_timeout_s: float = 30.0  # a half-open trial that never reports frees the slot
    refresh_interval: float = 0.25
    flush_interval: float = 0.25

    @classmethod
    def from_settings(cls) -> HealthConfig:
        return cls(
            alpha=settings.ROUTING_HEALTH_ALPHA,
            failures_to_open=settings.ROUTING_BREAKER_FAILURES,
            error_rate_to_open=settings.ROUTING_BREAKER_ERROR_RATE,
            min_requests=settings.ROUTING_BREAKER_MIN_REQUESTS,
            window_s=settings.ROUTING_BREAKER_WINDOW_S,
            cooldown_s=settings.ROUTING_BREAKER_COOLDOWN_S,
            trial_timeout_s=settings.ROUTING_BREAKER_TRIAL_TIMEOUT_S,
            refresh_interval=settings.ROUTING_HEALTH_REFRESH_S,
            flush_interval=settings.ROUTING_HEALTH_REFRESH_S,
        )


@dataclass(slots=True)
class DeploymentStats:
    state: int = CLOSED
    consecutive_failures: int = 0
    open_until: float = 0.0
    trial_until: float = 0.0
    window_start: float = 0.0
    window_total: int = 0
    window_failures: int = 0
    samples: int = 0
    ttft_ms: float | None = None
    latency_ms: float | None = None
    tokens_per_s: float | None = None
    error_rate: float = 0.0
    in_flight: int = 0

    def pack(self) -> str:
        def opt(v: float | None) -> str:
            return "" if v is None else repr(v)

        return "|".join(
            (
                str(self.state),
                str(self.consecutive_failures),
                repr(self.open_until),
                repr(self.trial_until),
                repr(self.window_start),
                str(self.window_total),
                str(self.window_failures),
                str(self.samples),
                opt(self.ttft_ms),
                opt(self.latency_ms),
                opt(self.tokens_per_s),
                repr(self.error_rate),
                str(self.in_flight),
            )
        )

    @classmethod
    def unpack(cls, raw: str | bytes) -> DeploymentStats:
        if isinstance(raw, bytes):
            raw = raw.decode()
        p = raw.split("|")

        def opt(v: str) -> float | None:
            return float(v) if v else None

        return cls(
            state=int(float(p[0])),
            consecutive_failures=int(float(p[1])),
            open_until=float(p[2]),
            trial_until=float(p[3]),
            window_start=float(p[4]),
            window_total=int(float(p[5])),
            window_failures=int(float(p[6])),
            samples=int(float(p[7])),
            ttft_ms=opt(p[8]),
            latency_ms=opt(p[9]),
            tokens_per_s=opt(p[10]),
            error_rate=float(p[11]),
            in_flight=int(float(p[12])),
        )

    def public(self) -> dict[str, Any]:
        """For APIs, logs and explanations."""
        return {
            "state": STATE_NAMES[self.state],
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
            "error_rate": round(self.error_rate, 4),
            "in_flight": self.in_flight,
            "samples": self.samples,
            "consecutive_failures": self.consecutive_failures,
        }


@dataclass(slots=True)
class Batch:
    """Outcomes of one deployment since the last flush, in arrival order summarized."""

    ok: int = 0
    failed: int = 0
    trailing_failures: int = 0  # failures after the last success
    ttft_sum: float = 0.0
    ttft_n: int = 0
    latency_sum: float = 0.0
    latency_n: int = 0
    tps_sum: float = 0.0
    tps_n: int = 0
    in_flight: int = 0

    def add(
        self,
        ok: bool | None,
        ttft_ms: float | None,
        latency_ms: float | None,
        tokens_per_s: float | None,
    ) -> None:
        if ok is True:
            self.ok += 1
            self.trailing_failures = 0
        elif ok is False:
            self.failed += 1
            self.trailing_failures += 1
        if ttft_ms is not None:
            self.ttft_sum += ttft_ms
            self.ttft_n += 1
        if latency_ms is not None:
            self.latency_sum += latency_ms
            self.latency_n += 1
        if tokens_per_s is not None:
            self.tps_sum += tokens_per_s
            self.tps_n += 1

    def args(self) -> list[Any]:
        return [
            self.ok,
            self.failed,
            self.trailing_failures,
            self.ttft_sum,
            self.ttft_n,
            self.latency_sum,
            self.latency_n,
            self.tps_sum,
            self.tps_n,
            self.in_flight,
        ]


def _ewma(old: float | None, total: float, n: int, alpha: float) -> float | None:
    if n == 0:
        return old
    mean = total / n
    if old is None:
        return mean
    decay = (1 - alpha) ** n
    return old * decay + mean * (1 - decay)


def apply_batch(s: DeploymentStats, b: Batch, now: float, cfg: HealthConfig) -> None:
    """The update rule (``_RECORD_LUA`` is the same rule for Redis)."""
    n = b.ok + b.failed
    s.ttft_ms = _ewma(s.ttft_ms, b.ttft_sum, b.ttft_n, cfg.alpha)
    s.latency_ms = _ewma(s.latency_ms, b.latency_sum, b.latency_n, cfg.alpha)
    s.tokens_per_s = _ewma(s.tokens_per_s, b.tps_sum, b.tps_n, cfg.alpha)
    if n:
        s.error_rate = _ewma(s.error_rate, float(b.failed), n, cfg.alpha) or 0.0
    s.samples += n
    s.in_flight = max(0, s.in_flight + b.in_flight)
    if now - s.window_start > cfg.window_s:
        s.window_start, s.window_total, s.window_failures = now, 0, 0
    s.window_total += n
    s.window_failures += b.failed
    if b.ok:
        s.consecutive_failures = b.trailing_failures
    else:
        s.consecutive_failures += b.trailing_failures
    if s.state == HALF_OPEN:
        if b.ok:
            s.state, s.consecutive_failures = CLOSED, 0
            s.window_start, s.window_total, s.window_failures = now, 0, 0
        elif b.failed:
            s.state, s.open_until = OPEN, now + cfg.cooldown_s
    elif s.state == CLOSED and b.failed:
        rate_trips = (
            s.window_total >= cfg.min_requests
            and s.window_failures >= cfg.error_rate_to_open * s.window_total
        )
        if s.consecutive_failures >= cfg.failures_to_open or rate_trips:
            s.state, s.open_until = OPEN, now + cfg.cooldown_s
            s.window_start, s.window_total, s.window_failures = now, 0, 0


def claim_trial(s: DeploymentStats, now: float, cfg: HealthConfig) -> bool:
    """Whether a request may go to this deployment now; in half-open, only one at a time."""
    if s.state == CLOSED:
        return True
    if s.state == OPEN and now >= s.open_until:
        s.state, s.trial_until = HALF_OPEN, now + cfg.trial_timeout_s
        return True
    if s.state == HALF_OPEN and now >= s.trial_until:
        s.trial_until = now + cfg.trial_timeout_s
        return True
    return False


class HealthStore:
    """The interface both backends implement."""

    config: HealthConfig

    def view(self, deployment_id: int) -> DeploymentStats | None:
        """The cached stats (None: never seen). No I/O while the view is fresh."""
        raise NotImplementedError

    def record(
        self,
        deployment_id: int,
        *,
        ok: bool | None,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        tokens_per_s: float | None = None,
        urgent: bool = False,
    ) -> None:
        """One outcome: ``ok`` True / False counts for the error rate and the breaker; None
        records only the timings (a stream's first chunk, before its outcome is known).
        ``urgent`` writes through at once (a breaker trial's outcome)."""
        raise NotImplementedError

    def started(self, deployment_id: int) -> None:
        raise NotImplementedError

    def finished(self, deployment_id: int) -> None:
        raise NotImplementedError

    def try_claim(self, deployment_id: int) -> bool:
        """Atomic half-open trial claim (see ``claim_trial``)."""
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def snapshot(self) -> dict[int, DeploymentStats]:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError


class LocalHealth(HealthStore):
    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        self._stats: dict[int, DeploymentStats] = {}
        self._lock = threading.Lock()

    def view(self, deployment_id: int) -> DeploymentStats | None:
        return self._stats.get(deployment_id)

    def _get(self, deployment_id: int) -> DeploymentStats:
        s = self._stats.get(deployment_id)
        if s is None:
            s = self._stats[deployment_id] = DeploymentStats(window_start=time.time())
        return s

    def record(
        self,
        deployment_id: int,
        *,
        ok: bool | None,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        tokens_per_s: float | None = None,
        urgent: bool = False,
    ) -> None:
        batch = Batch()
        batch.add(ok, ttft_ms, latency_ms, tokens_per_s)
        with self._lock:
            apply_batch(self._get(deployment_id), batch, time.time(), self.config)

    def started(self, deployment_id: int) -> None:
        with self._lock:
            self._get(deployment_id).in_flight += 1

    def finished(self, deployment_id: int) -> None:
        with self._lock:
            s = self._get(deployment_id)
            s.in_flight = max(0, s.in_flight - 1)

    def try_claim(self, deployment_id: int) -> bool:
        with self._lock:
            return claim_trial(self._get(deployment_id), time.time(), self.config)

    def snapshot(self) -> dict[int, DeploymentStats]:
        with self._lock:
            return {k: DeploymentStats.unpack(v.pack()) for k, v in self._stats.items()}

    def clear(self) -> None:
        with self._lock:
            self._stats.clear()


# One record per field of the hash KEYS[1]; the packed layout is DeploymentStats.pack's.
_LUA_COMMON = """
local function unpack_stats(raw, now)
  local s = {0, 0, 0, 0, now, 0, 0, 0, '', '', '', 0, 0}
  if raw then
    local i = 1
    for v in string.gmatch(raw .. '|', '([^|]*)|') do s[i] = v; i = i + 1 end
    for _, j in ipairs({1, 2, 3, 4, 5, 6, 7, 8, 12, 13}) do s[j] = tonumber(s[j]) end
    for _, j in ipairs({9, 10, 11}) do if s[j] ~= '' then s[j] = tonumber(s[j]) end end
  end
  return s
end
local function f(v)
  if v == '' then return '' end
  return string.format('%.17g', v)
end
local function pack_stats(s)
  return table.concat({string.format('%d', s[1]), string.format('%d', s[2]), f(s[3]), f(s[4]),
    f(s[5]), string.format('%d', s[6]), string.format('%d', s[7]), string.format('%d', s[8]),
    f(s[9]), f(s[10]), f(s[11]), f(s[12]), string.format('%d', s[13])}, '|')
end
"""

_RECORD_LUA = (
    _LUA_COMMON
    + """
local id = ARGV[1]
local now = tonumber(ARGV[2])
local a = tonumber(ARGV[3])
local fails_to_open = tonumber(ARGV[4])
local rate_to_open = tonumber(ARGV[5])
local min_requests = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local cooldown = tonumber(ARGV[8])
local ok = tonumber(ARGV[9])
local failed = tonumber(ARGV[10])
local trailing = tonumber(ARGV[11])
local s = unpack_stats(redis.call('HGET', KEYS[1], id), now)
local function ewma(old, total, n)
  if n == 0 then return old end
  local mean = total / n
  if old == '' then return mean end
  local d = (1 - a) ^ n
  return old * d + mean * (1 - d)
end
s[9] = ewma(s[9], tonumber(ARGV[12]), tonumber(ARGV[13]))
s[10] = ewma(s[10], tonumber(ARGV[14]), tonumber(ARGV[15]))
s[11] = ewma(s[11], tonumber(ARGV[16]), tonumber(ARGV[17]))
local n = ok + failed
if n > 0 then s[12] = ewma(s[12], failed, n) end
s[8] = s[8] + n
s[13] = math.max(0, s[13] + tonumber(ARGV[18]))
if now - s[5] > window then s[5] = now; s[6] = 0; s[7] = 0 end
s[6] = s[6] + n
s[7] = s[7] + failed
if ok > 0 then s[2] = trailing else s[2] = s[2] + trailing end
if s[1] == 2 then
  if ok > 0 then
    s[1] = 0; s[2] = 0; s[5] = now; s[6] = 0; s[7] = 0
  elseif failed > 0 then
    s[1] = 1; s[3] = now + cooldown
  end
elseif s[1] == 0 and failed > 0 then
  local rate_trips = s[6] >= min_requests and s[7] >= rate_to_open * s[6]
  if s[2] >= fails_to_open or rate_trips then
    s[1] = 1; s[3] = now + cooldown; s[5] = now; s[6] = 0; s[7] = 0
  end
end
local packed = pack_stats(s)
redis.call('HSET', KEYS[1], id, packed)
return packed
"""
)

_CLAIM_LUA = (
    _LUA_COMMON
    + """
local id = ARGV[1]
local now = tonumber(ARGV[2])
local trial = tonumber(ARGV[3])
local s = unpack_stats(redis.call('HGET', KEYS[1], id), now)
local granted = 0
if s[1] == 0 then
  granted = 1
elseif s[1] == 1 and now >= s[3] then
  s[1] = 2; s[4] = now + trial; granted = 1
elseif s[1] == 2 and now >= s[4] then
  s[4] = now + trial; granted = 1
end
local packed = pack_stats(s)
if granted == 1 and s[1] ~= 0 then redis.call('HSET', KEYS[1], id, packed) end
return {granted, packed}
"""
)


logger = logging.getLogger(__name__)

REDIS_ERRORS = shared_cache.ERRORS
OUTAGE_BACKOFF_S = 2.0  # after a Redis error, skip Redis this long before trying again


class RedisHealth(HealthStore):
    """Health shared through Redis. Health only orders candidates and trips breakers, so a
    Redis outage must not fail requests: while Redis is unreachable the store works from an
    in-process fallback (outcomes still count and breakers still trip, per process) and tries
    Redis again every ``OUTAGE_BACKOFF_S``; no call blocks the event loop longer than the
    socket timeout, once per back-off period."""

    def __init__(
        self, url: str, *, key: str = "mr:routing:health", config: HealthConfig | None = None
    ) -> None:
        import redis

        self.config = config or HealthConfig()
        self.key = key
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._record = self._redis.register_script(_RECORD_LUA)
        self._claim = self._redis.register_script(_CLAIM_LUA)
        self._lock = threading.Lock()
        self._pending: dict[int, Batch] = {}
        self._flushed_at = time.monotonic()
        self._view: dict[int, DeploymentStats] = {}
        self._view_at = 0.0
        self._fallback = LocalHealth(self.config)
        self._down_until = 0.0

    # -- outage handling

    def _down(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, exc: BaseException) -> None:
        if not self._down():
            logger.warning(
                "routing health: Redis unavailable, using in-process health",
                extra={"fields": {"error": type(exc).__name__}},
            )
        self._down_until = time.monotonic() + OUTAGE_BACKOFF_S
        self._view_at = time.monotonic()

    def _local_view(self, deployment_id: int) -> DeploymentStats | None:
        return self._fallback.view(deployment_id) or self._view.get(deployment_id)

    # -- reads

    def _refresh(self) -> None:
        raw = self._redis.hgetall(self.key)
        view = {int(k): DeploymentStats.unpack(v) for k, v in raw.items()}
        with self._lock:
            self._view = view
            self._view_at = time.monotonic()

    def view(self, deployment_id: int) -> DeploymentStats | None:
        if self._down():
            return self._local_view(deployment_id)
        if time.monotonic() - self._view_at >= self.config.refresh_interval:
            self._maybe_flush(force=True)
            try:
                self._refresh()
            except REDIS_ERRORS as exc:
                self._failed(exc)
                return self._local_view(deployment_id)
        return self._view.get(deployment_id)

    def snapshot(self) -> dict[int, DeploymentStats]:
        self.flush()
        if not self._down():
            try:
                self._refresh()
            except REDIS_ERRORS as exc:
                self._failed(exc)
        if self._down():
            return {**self._view, **self._fallback.snapshot()}
        return dict(self._view)

    # -- writes

    def _batch(self, deployment_id: int) -> Batch:
        batch = self._pending.get(deployment_id)
        if batch is None:
            batch = self._pending[deployment_id] = Batch()
        return batch

    def record(
        self,
        deployment_id: int,
        *,
        ok: bool | None,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        tokens_per_s: float | None = None,
        urgent: bool = False,
    ) -> None:
        if self._down():
            self._fallback.record(
                deployment_id,
                ok=ok,
                ttft_ms=ttft_ms,
                latency_ms=latency_ms,
                tokens_per_s=tokens_per_s,
            )
            return
        with self._lock:
            self._batch(deployment_id).add(ok, ttft_ms, latency_ms, tokens_per_s)
            current = self._view.get(deployment_id)
        # The breaker must see failures (and any outcome of a breaker trial) at once.
        busy = current is not None and (current.state != CLOSED or current.consecutive_failures > 0)
        self._maybe_flush(force=urgent or ok is False or busy)

    def started(self, deployment_id: int) -> None:
        if self._down():
            self._fallback.started(deployment_id)
            return
        with self._lock:
            self._batch(deployment_id).in_flight += 1
        self._maybe_flush(force=False)

    def finished(self, deployment_id: int) -> None:
        if self._down():
            self._fallback.finished(deployment_id)
            return
        with self._lock:
            self._batch(deployment_id).in_flight -= 1
        self._maybe_flush(force=False)

    def _maybe_flush(self, *, force: bool) -> None:
        if not force and time.monotonic() - self._flushed_at < self.config.flush_interval:
            return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed_at = time.monotonic()
        if not pending:
            return
        if self._down():
            self._to_fallback(pending)
            return
        now = time.time()
        c = self.config
        pipe = self._redis.pipeline(transaction=False)
        ids = []
        for deployment_id, batch in pending.items():
            if batch.ok + batch.failed + batch.ttft_n + batch.latency_n == 0 and not (
                batch.in_flight
            ):
                continue
            ids.append(deployment_id)
            self._record(
                keys=[self.key],
                args=[
                    deployment_id,
                    now,
                    c.alpha,
                    c.failures_to_open,
                    c.error_rate_to_open,
                    c.min_requests,
                    c.window_s,
                    c.cooldown_s,
                    *batch.args(),
                ],
                client=pipe,
            )
        try:
            results = pipe.execute()
        except REDIS_ERRORS as exc:
            self._failed(exc)
            self._to_fallback(pending)
            return
        with self._lock:
            for deployment_id, packed in zip(ids, results, strict=True):
                self._view[deployment_id] = DeploymentStats.unpack(packed)

    def _to_fallback(self, pending: dict[int, Batch]) -> None:
        """Outcomes that could not reach Redis still count, in this process."""
        fallback = self._fallback
        now = time.time()
        with fallback._lock:
            for deployment_id, batch in pending.items():
                apply_batch(fallback._get(deployment_id), batch, now, self.config)

    def try_claim(self, deployment_id: int) -> bool:
        if self._down():
            return self._fallback.try_claim(deployment_id)
        try:
            granted, packed = self._claim(
                keys=[self.key], args=[deployment_id, time.time(), self.config.trial_timeout_s]
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return self._fallback.try_claim(deployment_id)
        with self._lock:
            self._view[deployment_id] = DeploymentStats.unpack(packed)
        return bool(granted)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._view.clear()
            self._view_at = 0.0
        self._fallback.clear()
        self._down_until = 0.0
        self._redis.delete(self.key)


class ProcessDefault(Generic[T]):
    """One object per process, built on first use (under a lock, so threads share it) and
    replaceable, for tests and benchmarks; ``set(None)`` rebuilds it from settings next time."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                value = self._value
                if value is None:
                    value = self._value = self._build()
        return value

    def set(self, value: T | None) -> None:
        with self._lock:
            self._value = value


def _build_store() -> HealthStore:
    config = HealthConfig.from_settings()
    if settings.REDIS_URL:
        return RedisHealth(settings.REDIS_URL, config=config)
    return LocalHealth(config)


_default: ProcessDefault[HealthStore] = ProcessDefault(_build_store)


def health_store() -> HealthStore:
    """The process's store: Redis when ``REDIS_URL`` is set, else in-process."""
    return _default.get()


def health_store_set(store: HealthStore | None) -> None:
    """Replace the process's store (tests, benchmarks); None: rebuild from settings."""
    _default.set(store)


def stats_for(ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    store = health_store()
    out = {}
    for deployment_id in ids:
        s = store.view(deployment_id)
        if s is not None:
            out[deployment_id] = s.public()
    return out
