"""Console login rate limits (docs/identity.md, "Login rate limits").

Failed logins (a wrong password, or a wrong MFA code after a right password) are counted per
account (the username as typed, lower-cased) and per client address, in the Django cache: Redis
in production, so every process counts together; the process's memory in the embedded mode,
where the console is one process. ``settings.MEGAROUTER_LOGIN_FAILURES_PER_ACCOUNT`` /
``_PER_IP`` failures within ``MEGAROUTER_LOGIN_FAILURE_WINDOW_S`` of a window's first failure
block further attempts for that account or from that address until the window ends.

A window is two cache entries: ``<base>:start`` (when its first failure happened, written with
``add``, so concurrent first failures agree on one window) and ``<base>:<start>`` (the count,
moved with ``incr``, atomic in Redis and in the memory cache). The window's end is judged by the
clock, not only by the entries' expiry, so a frozen test clock and production agree. A
successful login ends the account's window; the address's window runs out on its own (a
success from one's own account must not wipe the failures an address made on others).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache


@dataclass(frozen=True)
class Blocked:
    """Why a login is refused: ``scope`` is ``"account"`` or ``"address"``."""

    scope: str
    retry_after_s: int

    @property
    def message(self) -> str:
        minutes = max(1, math.ceil(self.retry_after_s / 60))
        where = "for this account" if self.scope == "account" else "from this address"
        unit = "minute" if minutes == 1 else "minutes"
        return (
            f"Too many failed logins {where}. Try again in {minutes} {unit}, or reset your "
            "password."
        )


def _limits(account: str, ip: str | None) -> list[tuple[str, str, int]]:
    out = []
    name = account.strip().lower()
    if name and settings.MEGAROUTER_LOGIN_FAILURES_PER_ACCOUNT > 0:
        out.append(
            ("account", _base("account", name), settings.MEGAROUTER_LOGIN_FAILURES_PER_ACCOUNT)
        )
    if ip and settings.MEGAROUTER_LOGIN_FAILURES_PER_IP > 0:
        out.append(("address", _base("ip", ip), settings.MEGAROUTER_LOGIN_FAILURES_PER_IP))
    return out


def _base(kind: str, value: str) -> str:
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    return f"{settings.MEGAROUTER_LOGIN_FAILURE_PREFIX}:{kind}:{digest}"


def _window_start(base: str, now: float) -> float | None:
    start = cache.get(f"{base}:start")
    if start is None or now - start >= settings.MEGAROUTER_LOGIN_FAILURE_WINDOW_S:
        return None
    return float(start)


def login_blocked(*, account: str, ip: str | None) -> Blocked | None:
    """Whether this account or this address has used up its failures in the current window."""
    now = time.time()
    window = settings.MEGAROUTER_LOGIN_FAILURE_WINDOW_S
    for scope, base, limit in _limits(account, ip):
        start = _window_start(base, now)
        if start is None:
            continue
        if (cache.get(f"{base}:{start!r}") or 0) >= limit:
            return Blocked(scope=scope, retry_after_s=max(1, math.ceil(start + window - now)))
    return None


def login_failed(*, account: str, ip: str | None) -> None:
    """Count one failed login for the account and the address."""
    now = time.time()
    ttl = settings.MEGAROUTER_LOGIN_FAILURE_WINDOW_S + 60
    for _scope, base, _limit in _limits(account, ip):
        start = _window_start(base, now)
        if start is None:
            cache.delete(f"{base}:start")  # an ended window the cache has not expired yet
            if not cache.add(f"{base}:start", now, timeout=ttl):
                start = cache.get(f"{base}:start")  # another process opened it just now
            start = now if start is None else float(start)
        count_key = f"{base}:{start!r}"
        cache.add(count_key, 0, timeout=ttl)
        try:
            cache.incr(count_key)
        except ValueError:  # expired between add and incr
            cache.add(count_key, 1, timeout=ttl)


def login_succeeded(*, account: str) -> None:
    """End the account's window (the address's runs out on its own; see the module doc)."""
    for scope, base, _limit in _limits(account, None):
        if scope == "account":
            start = cache.get(f"{base}:start")
            cache.delete_many([f"{base}:start", f"{base}:{start!r}"])
