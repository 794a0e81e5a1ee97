"""Cache-aware conversations: a conversation routed with ``auto`` stays on the deployment that
holds its prompt cache while that is cheaper than switching (docs/routing.md, "Conversations
and prompt caches").

Identity, never content: a conversation is ``conversation_key(org, prefix, prompt_cache_key)``,
a keyed hash (HMAC-SHA256 under the project's secret, Django's ``salted_hmac``) of the
organization and either the caller's ``prompt_cache_key`` or the conversation's start (system
and developer turns, then the first user turn, the first ``PREFIX_CHARS`` of each): what a
provider's prefix cache is keyed by too. What is kept under it, for the provider's cache
lifetime only: the model, the deployment and the prompt tokens of the turn last served. No
text is kept.

After a turn is served, ``remember`` records where (only for models with a cached-input price:
elsewhere there is nothing to keep). Before the next turn is routed, ``recall`` reads it, and
the engine's ``stay_or_switch`` compares the turn's expected cost there, its previous prompt
read from the cache at the cached-input price, with the cost of the strategy's own pick with a
cold cache; the conversation stays when staying is not dearer and the model still passes every
filter and reaches the tier the request needs.

Two backends with one behaviour: ``LocalCacheMap`` in-process (embedded mode), ``RedisCacheMap``
shared by every gateway process (one GET per continuing conversation, one SET per served turn,
each entry expiring with the provider's cache); while Redis is unreachable the in-process map
serves and Redis is tried again after ``OUTAGE_BACKOFF_S``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.crypto import salted_hmac

from routing.health import ProcessDefault
from routing.ratelimit import REDIS_CONNECTIONS, REDIS_POOL_WAIT_S

log = logging.getLogger(__name__)

PREFIX_CHARS = 4000  # of each turn of the conversation's start, for its identity
OUTAGE_BACKOFF_S = 5.0
LOCAL_ENTRIES = 100_000

# How long each wire protocol's provider keeps a prompt cache after its last use, from the
# providers' documentation (docs/routing.md gives the sources): OpenAI (and Azure OpenAI)
# automatic caching "typically 5-10 minutes of inactivity"; Anthropic's default cache_control
# lifetime 5 minutes, refreshed on each hit, as Bedrock's prompt caching; Gemini's implicit
# caching publishes no lifetime, 5 minutes assumed.
CACHE_LIFETIME_S: dict[str, float] = {
    "openai": 300.0,
    "azure": 300.0,
    "anthropic": 300.0,
    "bedrock": 300.0,
    "gemini": 300.0,
}
DEFAULT_LIFETIME_S = 300.0
# Wire protocols whose providers cache a prompt without being asked. Anthropic and Bedrock
# cache only the prefixes a request marks (cache_control / cachePoint): a conversation there
# holds a cache only when its requests carry breakpoints.
AUTOMATIC_CACHING = frozenset({"openai", "azure", "gemini"})
MARKED_CACHING = frozenset({"anthropic", "bedrock"})  # cache what cache_control marks
# The shortest prompt any of them caches (OpenAI, Anthropic's larger models, Gemini Flash):
# a shorter previous prompt leaves nothing cached to stay for.
MIN_CACHED_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class CacheHolder:
    """Where a conversation's last turn was served and how long its prompt was."""

    model_id: str
    deployment_id: int
    prompt_tokens: int

    def encode(self) -> str:
        return f"{self.deployment_id}|{self.prompt_tokens}|{self.model_id}"

    @classmethod
    def decode(cls, raw: str | bytes | None) -> CacheHolder | None:
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            deployment, tokens, model = text.split("|", 2)
            return cls(model, int(deployment), int(tokens))
        except ValueError:
            return None


def conversation_key(org: Any, start: Iterable[str], prompt_cache_key: str | None) -> str:
    """The conversation's identity: a keyed hash, never its text (see the module docstring)."""
    if prompt_cache_key:
        value = f"{org}\x00key\x00{prompt_cache_key[:PREFIX_CHARS]}"
    else:
        value = f"{org}\x00start\x00" + "\x00".join(t[:PREFIX_CHARS] for t in start)
    return salted_hmac("megarouter.routing.conversation", value, algorithm="sha256").hexdigest()[
        :32
    ]


def lifetime_s(kind: str) -> float:
    return CACHE_LIFETIME_S.get(kind, DEFAULT_LIFETIME_S)


class CacheMap:
    async def get(self, key: str) -> CacheHolder | None:
        raise NotImplementedError

    async def put(self, key: str, holder: CacheHolder, ttl_s: float) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError


class LocalCacheMap(CacheMap):
    """In-process, bounded (least recently written out first), entries expire."""

    def __init__(self, max_entries: int = LOCAL_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, CacheHolder]] = OrderedDict()
        self._lock = threading.Lock()

    def get_now(self, key: str) -> CacheHolder | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[key]
                return None
            return entry[1]

    def put_now(self, key: str, holder: CacheHolder, ttl_s: float) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl_s, holder)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    async def get(self, key: str) -> CacheHolder | None:
        return self.get_now(key)

    async def put(self, key: str, holder: CacheHolder, ttl_s: float) -> None:
        self.put_now(key, holder, ttl_s)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RedisCacheMap(CacheMap):
    def __init__(self, url: str, *, prefix: str = "mr:routing:conv") -> None:
        self.url = url
        self.prefix = prefix
        self._clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._fallback = LocalCacheMap()
        self._down_until = 0.0

    def _client(self) -> Any:
        import redis.asyncio as redis_async

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # bounded and waited on, as routing.ratelimit's (a burst shares a few sockets)
            pool = redis_async.BlockingConnectionPool.from_url(
                self.url,
                max_connections=REDIS_CONNECTIONS,
                timeout=REDIS_POOL_WAIT_S,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
            )
            client = redis_async.Redis(connection_pool=pool)
            self._clients[loop] = client
        return client

    def _down(self, exc: Exception) -> None:
        log.warning("conversation caches: Redis unreachable (%s), in-process for now", exc)
        self._down_until = time.monotonic() + OUTAGE_BACKOFF_S

    async def get(self, key: str) -> CacheHolder | None:
        if time.monotonic() >= self._down_until:
            from redis.exceptions import RedisError

            try:
                return CacheHolder.decode(await self._client().get(f"{self.prefix}:{key}"))
            except (RedisError, OSError) as exc:
                self._down(exc)
        return self._fallback.get_now(key)

    async def put(self, key: str, holder: CacheHolder, ttl_s: float) -> None:
        if time.monotonic() >= self._down_until:
            from redis.exceptions import RedisError

            try:
                await self._client().set(
                    f"{self.prefix}:{key}", holder.encode(), px=max(int(ttl_s * 1000), 1)
                )
                return
            except (RedisError, OSError) as exc:
                self._down(exc)
        self._fallback.put_now(key, holder, ttl_s)

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


def _build_map() -> CacheMap:
    url = settings.REDIS_URL
    return RedisCacheMap(url) if url else LocalCacheMap()


_default: ProcessDefault[CacheMap] = ProcessDefault(_build_map)


def cache_map() -> CacheMap:
    """The process's conversation map: Redis when ``REDIS_URL`` is set, else in-process."""
    return _default.get()


def cache_map_set(value: CacheMap | None) -> None:
    """Replace the process's map (tests); None: rebuild from settings."""
    _default.set(value)


async def recall(key: str | None) -> CacheHolder | None:
    if key is None or not settings.MEGAROUTER_CACHE_AWARE_ROUTING:
        return None
    return await cache_map().get(key)


async def remember(
    key: str | None,
    *,
    model_id: str,
    deployment_id: int,
    kind: str,
    prompt_tokens: int,
    caches: bool,
    marked: bool = False,
) -> None:
    """Record the deployment that served a conversation's turn, for the provider's cache
    lifetime (nothing for a model without a cached-input price, a prompt too short to be
    cached, or a provider that caches only marked prefixes when the request marked none)."""
    if key is None or not caches or prompt_tokens < MIN_CACHED_TOKENS:
        return
    if kind not in AUTOMATIC_CACHING and not (marked and kind in MARKED_CACHING):
        return
    if not settings.MEGAROUTER_CACHE_AWARE_ROUTING:
        return
    holder = CacheHolder(model_id, deployment_id, prompt_tokens)
    await cache_map().put(key, holder, lifetime_s(kind))
