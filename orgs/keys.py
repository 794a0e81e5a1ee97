"""The gateway's key context: ``await key_context_for(raw_key)`` on the hot path.

Resolution reads one row set from the database (one query: the secret joined to its key, project,
membership, user and organization), then caches it in two tiers:

1. an in-process TTL cache (``LOCAL_TTL`` = 0.5 s), so a hot key costs no I/O at all;
2. the shared Django cache (Redis in production) for ``SHARED_TTL`` seconds, so a process that
   just started or whose local entry expired does not go to the database.

Revocation reaches every process within one second: services call ``invalidate_prefixes`` after
their transaction commits, which drops this process's local entries and writes a *tombstone*
(the invalidation time) to the shared cache. A shared entry is only trusted if it was read from
the database after the newest tombstone for its prefix (entries and tombstone are fetched in one
round trip), which also closes the race where a reader that started before the commit writes a
stale entry after the invalidation. Other processes drop their local copy within ``LOCAL_TTL``.

In the embedded mode the Django cache is per-process memory, so the shared tier is skipped and
the bound is ``LOCAL_TTL`` by construction.

Expiry (of the key and of a rotated-out secret) is checked against the clock on every request,
so it never waits for a cache.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import ipaddress
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.utils import timezone

from megarouter import shared_cache
from orgs import secrets

logger = logging.getLogger(__name__)

LOCAL_TTL = 0.5
SHARED_TTL = 60
LOCAL_MAX_ENTRIES = 50_000
_CACHE_VERSION = 1


class KeyRejected(Exception):
    """The key cannot be used. ``reason`` is one of REASONS."""

    REASONS = ("missing", "invalid", "revoked", "expired", "inactive")

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in self.REASONS, reason
        self.reason = reason
        self.detail = detail or reason
        super().__init__(f"{reason}: {self.detail}")


@dataclass(frozen=True, slots=True)
class KeyContext:
    """Everything the gateway needs to know about the caller's key (no secrets)."""

    key_id: int
    key_prefix: str  # the prefix of the secret used (differs from the key's during rotation)
    organization_id: int
    department_id: int
    team_id: int
    project_id: int
    member_id: int  # orgs.Membership id
    user_id: int
    allowed_models: tuple[str, ...]
    ip_allowlist: tuple[str, ...]
    rpm_limit: int | None
    tpm_limit: int | None
    routing_policy: Mapping[str, Any] | None
    expires_at: datetime | None
    time_zone: str


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the caches hold for one secret prefix."""

    digest: str
    context: KeyContext | None  # None: inactive or revoked (``refusal`` says why)
    refusal: str
    refusal_detail: str
    secret_valid_until: datetime | None
    loaded_at: float  # wall clock when the database read started


def _entry_to_cache(entry: _Entry) -> dict[str, Any]:
    data = asdict(entry)
    return data


def _entry_from_cache(data: dict[str, Any]) -> _Entry:
    ctx = data["context"]
    if ctx is not None:
        ctx = dict(ctx)
        ctx["allowed_models"] = tuple(ctx["allowed_models"])
        ctx["ip_allowlist"] = tuple(ctx["ip_allowlist"])
        context: KeyContext | None = KeyContext(**ctx)
    else:
        context = None
    return _Entry(**{**data, "context": context})


def _load(prefix: str) -> _Entry | None:
    """One query. None when no secret has this prefix."""
    from orgs.models import ApiKeySecret

    started = time.time()
    row = (
        ApiKeySecret.objects.select_related(
            "api_key__project", "api_key__membership__user", "api_key__organization"
        )
        .filter(prefix=prefix)
        .first()
    )
    if row is None:
        return None
    key = row.api_key
    project = key.project
    membership = key.membership
    org = key.organization
    refusal, detail = "", ""
    if key.revoked_at is not None:
        refusal, detail = "revoked", f"the key was revoked ({key.revoked_reason or 'revoked'})"
    elif org.archived_at is not None:
        refusal, detail = "inactive", "the organization is archived"
    elif project.archived_at is not None:
        refusal, detail = "inactive", "the key's project (or its team or department) is archived"
    elif membership.removed_at is not None or not membership.user.is_active:
        refusal, detail = "inactive", "the member who created the key has left"
    context = None
    if not refusal:
        _root, department_id, team_id, project_id = project.ancestor_ids
        context = KeyContext(
            key_id=key.pk,
            key_prefix=row.prefix,
            organization_id=org.pk,
            department_id=department_id,
            team_id=team_id,
            project_id=project_id,
            member_id=membership.pk,
            user_id=membership.user_id,
            allowed_models=tuple(key.allowed_models or ()),
            ip_allowlist=tuple(key.ip_allowlist or ()),
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            routing_policy=key.routing_policy,
            expires_at=key.expires_at,
            time_zone=org.time_zone,
        )
    return _Entry(
        digest=row.digest,
        context=context,
        refusal=refusal,
        refusal_detail=detail,
        secret_valid_until=row.valid_until,
        loaded_at=started,
    )


# A shared cache that is down or slow must not take key auth down with it: the database is the
# source of truth, so a failed read falls through to it and a failed write is skipped.
SHARED_CACHE_ERRORS = shared_cache.ERRORS


def _shared_cache_failed(operation: str) -> None:
    logger.warning(
        "shared key cache unavailable; using the database",
        extra={"fields": {"operation": operation}},
    )


def _shared_cache_usable(cache: Any) -> bool:
    return not isinstance(cache, LocMemCache | DummyCache)


def _entry_key(prefix: str) -> str:
    return f"orgs:keyctx:{_CACHE_VERSION}:{prefix}"


def _tomb_key(prefix: str) -> str:
    return f"orgs:keyinv:{prefix}"


class KeyResolver:
    """Resolves raw keys to contexts through the two cache tiers. One per process
    (``default_resolver``); tests build more to stand in for other processes."""

    def __init__(self, *, local_ttl: float = LOCAL_TTL, cache_alias: str = "default") -> None:
        self.local_ttl = local_ttl
        self.cache_alias = cache_alias
        self._local: dict[str, tuple[float, _Entry | None]] = {}
        self._lock = threading.Lock()
        self._inflight: dict[tuple[int, str], asyncio.Future[_Entry | None]] = {}
        self.db_loads = 0  # lookups that reached the database (for tests and metrics)
        self.shared_hits = 0  # lookups answered by the shared cache

    # -- tiers ---------------------------------------------------------------------------
    def _local_get(self, prefix: str) -> tuple[bool, _Entry | None]:
        hit = self._local.get(prefix)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def _local_put(self, prefix: str, entry: _Entry | None) -> None:
        with self._lock:
            if len(self._local) >= LOCAL_MAX_ENTRIES:
                self._local.clear()
            self._local[prefix] = (time.monotonic() + self.local_ttl, entry)

    def forget(self, prefixes: list[str] | None = None) -> None:
        with self._lock:
            if prefixes is None:
                self._local.clear()
            else:
                for prefix in prefixes:
                    self._local.pop(prefix, None)

    @property
    def _cache(self) -> Any:
        return caches[self.cache_alias]

    def _resolve_entry_sync(self, prefix: str) -> _Entry | None:
        found, entry = self._local_get(prefix)
        if found:
            return entry
        cache = self._cache
        shared = _shared_cache_usable(cache)
        if shared:
            try:
                got = cache.get_many([_entry_key(prefix), _tomb_key(prefix)])
            except SHARED_CACHE_ERRORS:
                _shared_cache_failed("read")
                shared = False
            else:
                entry = self._trusted(got, prefix)
                if entry is not None:
                    self.shared_hits += 1
                    self._local_put(prefix, entry)
                    return entry
        entry = _load(prefix)
        self.db_loads += 1
        if shared and entry is not None:
            try:
                cache.set(_entry_key(prefix), _entry_to_cache(entry), SHARED_TTL)
            except SHARED_CACHE_ERRORS:
                _shared_cache_failed("write")
        self._local_put(prefix, entry)
        return entry

    async def _resolve_entry(self, prefix: str) -> _Entry | None:
        found, entry = self._local_get(prefix)
        if found:
            return entry
        # Single flight: concurrent requests for one cold key share one lookup.
        loop = asyncio.get_running_loop()
        flight_key = (id(loop), prefix)
        pending = self._inflight.get(flight_key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry | None] = loop.create_future()
        self._inflight[flight_key] = future
        try:
            entry = await self._fetch(prefix)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            self._inflight.pop(flight_key, None)

    async def _fetch(self, prefix: str) -> _Entry | None:
        cache = self._cache
        shared = _shared_cache_usable(cache)
        if shared:
            try:
                got = await cache.aget_many([_entry_key(prefix), _tomb_key(prefix)])
            except SHARED_CACHE_ERRORS:
                _shared_cache_failed("read")
                shared = False
            else:
                entry = self._trusted(got, prefix)
                if entry is not None:
                    self.shared_hits += 1
                    self._local_put(prefix, entry)
                    return entry
        entry = await sync_to_async(_load, thread_sensitive=True)(prefix)
        self.db_loads += 1
        if shared and entry is not None:
            try:
                await cache.aset(_entry_key(prefix), _entry_to_cache(entry), SHARED_TTL)
            except SHARED_CACHE_ERRORS:
                _shared_cache_failed("write")
        self._local_put(prefix, entry)
        return entry

    @staticmethod
    def _trusted(got: dict[str, Any], prefix: str) -> _Entry | None:
        data = got.get(_entry_key(prefix))
        if data is None:
            return None
        tomb = got.get(_tomb_key(prefix))
        if tomb is not None and data["loaded_at"] <= tomb:
            return None
        return _entry_from_cache(data)

    # -- public --------------------------------------------------------------------------
    def resolve_sync(self, raw_key: str | None) -> KeyContext:
        prefix = _prefix_or_raise(raw_key)
        return _check(raw_key or "", self._resolve_entry_sync(prefix))

    async def resolve(self, raw_key: str | None) -> KeyContext:
        prefix = _prefix_or_raise(raw_key)
        return _check(raw_key or "", await self._resolve_entry(prefix))

    def invalidate(self, prefixes: list[str]) -> None:
        self.forget(prefixes)
        cache = self._cache
        if _shared_cache_usable(cache) and prefixes:
            now = time.time()
            try:
                cache.set_many({_tomb_key(p): now for p in prefixes}, SHARED_TTL + 5)
                cache.delete_many([_entry_key(p) for p in prefixes])
            except SHARED_CACHE_ERRORS:
                # The change is committed; other processes see it from the database while the
                # shared cache is unreachable. A cache that kept its data through the outage
                # may serve the old entry until SHARED_TTL runs out (docs/architecture.md).
                _shared_cache_failed("invalidate")


def raw_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The gateway key a client sent: ``Authorization: Bearer <key>`` (OpenAI clients) or
    ``x-api-key: <key>`` (Anthropic clients). ``headers`` is case-insensitive, like
    ``request.headers``."""
    authorization = headers.get("Authorization") or headers.get("authorization") or ""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = headers.get("x-api-key") or headers.get("X-Api-Key") or ""
    return api_key.strip() or None


def _prefix_or_raise(raw_key: str | None) -> str:
    if not raw_key:
        raise KeyRejected("missing", "no API key was sent")
    prefix = secrets.prefix_of(raw_key, secrets.GATEWAY_KEY)
    if prefix is None:
        raise KeyRejected("invalid", "the API key is malformed")
    return prefix


def _check(raw_key: str, entry: _Entry | None) -> KeyContext:
    if entry is None or not secrets.matches(raw_key, entry.digest):
        raise KeyRejected("invalid", "the API key is not valid")
    now = timezone.now()
    if entry.context is None:
        raise KeyRejected(entry.refusal, entry.refusal_detail)
    if entry.secret_valid_until is not None and entry.secret_valid_until <= now:
        raise KeyRejected("expired", "this secret was rotated out and its grace period ended")
    if entry.context.expires_at is not None and entry.context.expires_at <= now:
        raise KeyRejected("expired", "the API key has expired")
    return entry.context


default_resolver = KeyResolver()


async def key_context_for(raw_key: str | None) -> KeyContext:
    """The context of a gateway key, or ``KeyRejected`` (missing / invalid / revoked /
    expired / inactive). At most one database query on a cold cache; none when warm."""
    return await default_resolver.resolve(raw_key)


def key_context_for_sync(raw_key: str | None) -> KeyContext:
    return default_resolver.resolve_sync(raw_key)


def invalidate_prefixes(prefixes: list[str]) -> None:
    """Called by services after commit when keys change state."""
    default_resolver.invalidate(prefixes)


@functools.lru_cache(maxsize=4096)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def ip_allowed(ctx: KeyContext, ip: str | None) -> bool:
    """Whether the client address is inside the key's allow-list (an empty list allows all)."""
    if not ctx.ip_allowlist:
        return True
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in _network(cidr) for cidr in ctx.ip_allowlist)


def model_allowed(ctx: KeyContext, model_id: str) -> bool:
    """Whether ``model_id`` matches one of the key's allowed ids or glob patterns (an empty
    list allows every model). Matching is case-sensitive (``openai/*``)."""
    if not ctx.allowed_models:
        return True
    return any(
        pattern == model_id or fnmatch.fnmatchcase(model_id, pattern)
        for pattern in ctx.allowed_models
    )
