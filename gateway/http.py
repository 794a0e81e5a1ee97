"""The shared outbound HTTP clients: one pooled ``httpx.AsyncClient`` per event loop.

Every provider call goes through :func:`get_client`. A client is created lazily the first time
a loop asks for one (httpx clients are bound to the loop they first ran on) and closed by
:func:`aclose_clients` on shutdown, or when its loop is garbage collected. Keep-alive HTTP/1.1
connections are pooled per upstream host; the limits and timeouts are explicit and come from
settings (``PROVIDER_*`` in docs/configuration.md and docs/providers.md).

Timeouts are explicit per call with :class:`Timeouts`: ``connect`` (TCP/TLS), ``first_byte``
(streaming: request sent -> response headers and the first chunk), ``stall`` (the longest gap
between two stream chunks) and ``total`` (a whole non-streaming call: its headers come only
when the whole answer is ready). There is one timeout model, routing's (docs/failover.md,
"Deadlines"): the defaults are the ``ROUTING_*`` per-attempt settings, and a failover attempt
tightens them to its budget. Adapters enforce them with ``asyncio.timeout``; httpx's own
timeouts are only a backstop.

The transport is ``PROVIDER_HTTP_TRANSPORT``: httpx-aiohttp by default, chosen over httpx's own
httpcore transport by measurement (``bench/transport.py``, docs/providers.md).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, replace
from typing import Any

import httpx
from django.conf import settings
from httpx_aiohttp import AiohttpTransport

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. Streams: ``first_byte`` covers connect + send + headers + first chunk, then
    ``stall`` bounds each gap. Non-streaming calls: ``total`` bounds the whole call."""

    connect: float
    first_byte: float
    stall: float
    total: float
    write: float = 10.0
    pool: float = 5.0

    @classmethod
    def default(cls) -> Timeouts:
        """An attempt's timeouts outside the failover loop (probes, tests): the settings'."""
        return cls(
            connect=settings.PROVIDER_CONNECT_TIMEOUT,
            first_byte=settings.ROUTING_TTFT_TIMEOUT_S,
            stall=settings.ROUTING_STALL_TIMEOUT_S,
            total=settings.ROUTING_ATTEMPT_TIMEOUT_S,
        )

    def with_(self, **changes: float) -> Timeouts:
        return replace(self, **changes)

    def httpx_timeout(self, *, stream: bool = True) -> httpx.Timeout:
        """httpx's own timeouts, a backstop behind the adapters' explicit deadlines."""
        read = max(self.first_byte, self.stall) if stream else self.total
        return httpx.Timeout(connect=self.connect, read=read, write=self.write, pool=self.pool)


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def _limits() -> httpx.Limits:
    return httpx.Limits(
        max_connections=settings.PROVIDER_MAX_CONNECTIONS,
        max_keepalive_connections=settings.PROVIDER_MAX_KEEPALIVE,
        keepalive_expiry=settings.PROVIDER_KEEPALIVE_EXPIRY,
    )


def make_transport(name: str | None = None) -> httpx.AsyncBaseTransport | None:
    """The transport named by ``name`` or setting ``PROVIDER_HTTP_TRANSPORT``: ``httpx`` (the
    default httpcore transport; returns None) or ``aiohttp`` (needs ``httpx-aiohttp``)."""
    name = name or settings.PROVIDER_HTTP_TRANSPORT
    if name == "httpx":
        return None
    if name == "aiohttp":
        return AiohttpTransport(limits=_limits(), trust_env=False)
    raise ValueError(f"unknown PROVIDER_HTTP_TRANSPORT {name!r} (use httpx or aiohttp)")


def new_client(**kwargs: Any) -> httpx.AsyncClient:
    """A client configured like the shared one (for benchmarks and tests that need their own)."""
    transport = kwargs.pop("transport", None) or make_transport()
    if transport is not None:
        kwargs["transport"] = transport
    options: dict[str, Any] = {
        "limits": _limits(),
        "timeout": Timeouts.default().httpx_timeout(),
        "http1": True,
        "http2": False,
        "follow_redirects": False,
        "trust_env": False,
    }
    options.update(kwargs)
    return httpx.AsyncClient(**options)


def get_client() -> httpx.AsyncClient:
    """The shared client of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = new_client()
        _clients[loop] = client
    return client


async def aclose_clients() -> None:
    """Close the running loop's client (call on shutdown: ASGI lifespan, worker exit)."""
    loop = asyncio.get_running_loop()
    client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()
