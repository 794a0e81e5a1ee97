"""Deployment rate limits (``rpm_limit``, ``tpm_limit``), enforced across every gateway process
before a call is made (docs/failover.md, "Load balancing and rate limits").

The window is the last 60 seconds, sliding:

- requests: every admitted call is one entry in a sorted set scored by its time, so at most
  ``rpm_limit`` calls start in any 60 s: exact, not per calendar minute;
- tokens: per-second counters of the tokens charged to the deployment. A call is admitted
  while the window's tokens plus its prompt estimate stay within ``tpm_limit``; the estimate
  counts at once, and the rest of what it used (its completion, the estimate's error) is added
  when it ends (:meth:`DeploymentLimiter.used`). Calls in flight can therefore take the window
  past the limit by their completions, as with any provider's own TPM (the tokens are not
  known in advance).

A refusal says how long until the window frees a slot; the failover loop passes the deployment
over (``skipped_rate_limited``), and when every candidate was refused the caller gets a 429 with
that Retry-After. Deployments without limits cost nothing (no I/O).

Two backends with one behaviour (the tests run against both): ``LocalLimiter`` in-process
(embedded mode: one process), ``RedisLimiter`` one Lua script per admission, atomic across
processes, on Redis's own clock. While Redis is unreachable the limiter works from the
in-process one (each process then enforces the limit alone) and tries Redis again after
``OUTAGE_BACKOFF_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from routing.health import ProcessDefault

log = logging.getLogger(__name__)

WINDOW_S = 60
OUTAGE_BACKOFF_S = 5.0
REDIS_CONNECTIONS = 16  # per event loop
REDIS_POOL_WAIT_S = 2.0  # for a free connection, before the call counts as Redis down


class DeploymentLimiter:
    async def acquire(
        self, deployment_id: int, *, rpm: int | None, tpm: int | None, tokens: int
    ) -> float | None:
        """Admit one call of about ``tokens`` prompt tokens: None when admitted (it counts
        now), else the seconds until the window could admit it."""
        raise NotImplementedError

    async def used(self, deployment_id: int, tokens: int) -> None:
        """Add ``tokens`` more to the deployment's token window (an admitted call's rest)."""
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError


@dataclass
class _Window:
    starts: deque[float] = field(default_factory=deque)  # admitted calls' times
    tokens: dict[int, int] = field(default_factory=dict)  # whole second -> tokens


class LocalLimiter(DeploymentLimiter):
    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[int, _Window] = {}

    async def acquire(
        self, deployment_id: int, *, rpm: int | None, tpm: int | None, tokens: int
    ) -> float | None:
        return self.acquire_now(deployment_id, rpm=rpm, tpm=tpm, tokens=tokens)

    def acquire_now(
        self, deployment_id: int, *, rpm: int | None, tpm: int | None, tokens: int
    ) -> float | None:
        now = self._clock()
        with self._lock:
            w = self._windows.setdefault(deployment_id, _Window())
            while w.starts and w.starts[0] <= now - WINDOW_S:
                w.starts.popleft()
            second = math.floor(now)
            for s in [s for s in w.tokens if s <= second - WINDOW_S]:
                del w.tokens[s]
            if rpm and len(w.starts) >= rpm:
                return max(w.starts[0] + WINDOW_S - now, 0.001)
            if tpm and w.tokens and sum(w.tokens.values()) + tokens > tpm:
                return max(min(w.tokens) + WINDOW_S - now, 0.001)
            w.starts.append(now)
            if tokens:
                w.tokens[second] = w.tokens.get(second, 0) + tokens
            return None

    async def used(self, deployment_id: int, tokens: int) -> None:
        self.used_now(deployment_id, tokens)

    def used_now(self, deployment_id: int, tokens: int) -> None:
        if tokens <= 0:
            return
        second = math.floor(self._clock())
        with self._lock:
            w = self._windows.setdefault(deployment_id, _Window())
            w.tokens[second] = w.tokens.get(second, 0) + tokens

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


# KEYS: calls (sorted set), tokens (hash: second -> tokens).
# ARGV: rpm (0: none), tpm (0: none), tokens, member. Returns -1 (admitted) or the wait in ms.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
if rpm > 0 and redis.call('ZCARD', KEYS[1]) >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(math.ceil((tonumber(oldest[2]) + 60 - now) * 1000), 1)
end
local second = math.floor(now)
if tpm > 0 then
  local used, first = 0, nil
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local s = tonumber(fields[i])
    if s <= second - 60 then
      redis.call('HDEL', KEYS[2], fields[i])
    else
      used = used + tonumber(fields[i + 1])
      if first == nil or s < first then first = s end
    end
  end
  if first ~= nil and used + tokens > tpm then
    return math.max(math.ceil((first + 60 - now) * 1000), 1)
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], 61)
if tokens > 0 then
  redis.call('HINCRBY', KEYS[2], second, tokens)
  redis.call('EXPIRE', KEYS[2], 61)
end
return -1
"""

# KEYS: tokens. ARGV: tokens.
_USED_LUA = """
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], t[1], tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[1], 61)
return 1
"""


class RedisLimiter(DeploymentLimiter):
    def __init__(self, url: str, *, prefix: str = "mr:routing:limit") -> None:
        self.url = url
        self.prefix = prefix
        self._clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._fallback = LocalLimiter()
        self._down_until = 0.0

    def _keys(self, deployment_id: int) -> list[str]:
        return [f"{self.prefix}:{deployment_id}:calls", f"{self.prefix}:{deployment_id}:tokens"]

    def _client(self) -> Any:
        import redis.asyncio as redis_async

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # A bounded pool that callers wait on: a burst of admissions shares a few
            # connections instead of opening one socket each (a hundred connects at once timed
            # out on a busy machine and dropped every process to its own limits).
            pool = redis_async.BlockingConnectionPool.from_url(
                self.url,
                max_connections=REDIS_CONNECTIONS,
                timeout=REDIS_POOL_WAIT_S,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
            )
            client = redis_async.Redis(connection_pool=pool)
            client.limit_scripts = (  # type: ignore[attr-defined]
                client.register_script(_ACQUIRE_LUA),
                client.register_script(_USED_LUA),
            )
            self._clients[loop] = client
        return client

    def _down(self, exc: Exception) -> None:
        log.warning("rate limits: Redis unreachable (%s), per-process limits for now", exc)
        self._down_until = time.monotonic() + OUTAGE_BACKOFF_S

    async def acquire(
        self, deployment_id: int, *, rpm: int | None, tpm: int | None, tokens: int
    ) -> float | None:
        if time.monotonic() >= self._down_until:
            from redis.exceptions import RedisError

            acquire_script = self._client().limit_scripts[0]
            args = [rpm or 0, tpm or 0, max(int(tokens), 0), uuid.uuid4().hex]
            try:
                wait_ms = int(await acquire_script(keys=self._keys(deployment_id), args=args))
            except (RedisError, OSError) as exc:
                self._down(exc)
            else:
                return None if wait_ms < 0 else wait_ms / 1000
        return self._fallback.acquire_now(deployment_id, rpm=rpm, tpm=tpm, tokens=tokens)

    async def used(self, deployment_id: int, tokens: int) -> None:
        if tokens <= 0:
            return
        if time.monotonic() >= self._down_until:
            from redis.exceptions import RedisError

            script = self._client().limit_scripts[1]
            try:
                await script(keys=self._keys(deployment_id)[1:], args=[int(tokens)])
                return
            except (RedisError, OSError) as exc:
                self._down(exc)
        self._fallback.used_now(deployment_id, tokens)

    def clear(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            keys = list(client.scan_iter(f"{self.prefix}:*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        self._fallback.clear()
        self._down_until = 0.0


def _build_limiter() -> DeploymentLimiter:
    url = settings.REDIS_URL
    return RedisLimiter(url) if url else LocalLimiter()


_default: ProcessDefault[DeploymentLimiter] = ProcessDefault(_build_limiter)


def deployment_limiter() -> DeploymentLimiter:
    """The process's limiter: Redis when ``REDIS_URL`` is set, else in-process."""
    return _default.get()


def deployment_limiter_set(limiter: DeploymentLimiter | None) -> None:
    """Replace the process's limiter (tests); None: rebuild from settings."""
    _default.set(limiter)
