"""The ``/v1/`` front door: a small ASGI app in front of Django.

Requests under ``/v1`` go straight to :func:`gateway.api.handlers.dispatch`; everything else
(console, management API, health, metrics) goes to Django. Skipping Django's request/response
machinery and middleware stack on the hot path saves 2 to 8 ms per request at p50 and triples
the throughput (measured in docs/api.md, "Serving: why a raw ASGI front door"). This module
provides what that stack would have: the request id, the body size limit (413), the JSON
request log line, and client-disconnect handling for streams (the upstream call is cancelled
and the stream is settled with what was generated).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from gateway.api.handlers import dispatch, error_response
from gateway.api.http import ApiRequest, ApiResponse
from gateway.errors import InvalidRequest, PayloadTooLarge, describe_exception
from megarouter.middleware import request_id_for

logger = logging.getLogger("megarouter.request")

Scope = dict[str, Any]


class _Meta:
    """Just enough of ``HttpRequest.META`` for ``request_id_for``."""

    def __init__(self, request_id: str) -> None:
        self.META = {"HTTP_X_REQUEST_ID": request_id}


DB_HYGIENE_INTERVAL = 5.0  # seconds between connection checks of the sync worker thread


class GatewayASGI:
    def __init__(self, django_app: Any) -> None:
        self.django_app = django_app
        self._hygiene_at = 0.0
        self._background: set[asyncio.Future[Any]] = set()
        self._probes: asyncio.Future[Any] | None = None  # in-process probes (embedded mode)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path == "/v1" or path.startswith("/v1/"):
                await self.handle(scope, receive, send)
                return
        elif kind == "lifespan":
            await self.lifespan(receive, send)
            return
        await self.django_app(scope, receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.warm_up()
                if settings.ROUTING_PROBES_IN_PROCESS:
                    from gateway.tasks import probe_forever

                    self._probes = asyncio.ensure_future(probe_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._probes is not None:
                    self._probes.cancel()
                with contextlib.suppress(Exception):
                    from gateway.http import aclose_clients

                    await aclose_clients()
                with contextlib.suppress(Exception):  # queued usage rows reach the database
                    from billing.admission.writer import flush_started

                    await asyncio.to_thread(flush_started, 10.0)
                with contextlib.suppress(Exception):  # the last failed-request counts
                    from billing.failures import failures_shutdown

                    await failures_shutdown()
                with contextlib.suppress(Exception):  # the spans still in the batch
                    from megarouter import tracing

                    await asyncio.to_thread(tracing.shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def warm_up(self) -> None:
        """Loads what the first request would otherwise pay for (about 0.3 s measured in
        bench/: the catalog snapshot, the complexity model, the provider client), so a fresh
        worker answers its first request at full speed. A failure here is logged, not fatal:
        the same loads happen lazily on the first request."""
        try:
            from gateway.http import get_client
            from routing.catalog import acatalog_snapshot
            from routing.complexity.model import default_model

            await acatalog_snapshot()
            await sync_to_async(default_model, thread_sensitive=False)()
            get_client()
        except Exception:
            logger.warning("warm-up failed; loading lazily on the first request", exc_info=True)

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        client = scope.get("client")
        request = ApiRequest(
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            body=b"",
            request_id=request_id_for(_Meta(headers.get("x-request-id", ""))),
            client_ip=client[0] if client else None,
        )
        try:
            request.body = await _read_body(receive, headers, settings.MEGAROUTER_MAX_BODY_BYTES)
        except (PayloadTooLarge, InvalidRequest) as error:
            response = error_response(request, error)
        except _Disconnected:
            return
        else:
            response = await dispatch(request)
        if response.stream is None:
            await _send_whole(send, request, response)
        else:
            await _send_stream(receive, send, request, response)
        _log(request, response, started)
        self._db_hygiene()

    def _db_hygiene(self) -> None:
        """Django closes stale or broken database connections on request start and end; this
        front door sends no such signals, so the thread that runs the cold-path queries
        (orgs key loads, catalog rebuilds via sync_to_async) gets the same check here, at most
        every few seconds and off the request path."""
        now = time.monotonic()
        if now - self._hygiene_at < DB_HYGIENE_INTERVAL:
            return
        self._hygiene_at = now
        task = asyncio.ensure_future(sync_to_async(close_old_connections, thread_sensitive=True)())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Disconnected(Exception):
    pass


async def _read_body(receive: Any, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header.") from None
        if size > limit:
            raise PayloadTooLarge(_too_large(limit))
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body = message.get("body", b"")
        if body:
            total += len(body)
            if total > limit:
                raise PayloadTooLarge(_too_large(limit))
            chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


def _start(request: ApiRequest, response: ApiResponse, *, length: int | None) -> dict[str, Any]:
    raw = [
        (b"content-type", response.content_type.encode()),
        (b"x-request-id", request.request_id.encode()),
    ]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    for name, value in response.headers.items():
        raw.append((name.encode("latin-1"), value.encode("latin-1")))
    return {"type": "http.response.start", "status": response.status, "headers": raw}


async def _send_whole(send: Any, request: ApiRequest, response: ApiResponse) -> None:
    await send(_start(request, response, length=len(response.body)))
    await send({"type": "http.response.body", "body": response.body})


async def _send_stream(receive: Any, send: Any, request: ApiRequest, response: ApiResponse) -> None:
    stream = response.stream
    assert stream is not None

    async def pump() -> None:
        await send(_start(request, response, length=None))
        async for event in stream:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def disconnected() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    pumping = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, watching):
            if not task.done():
                task.cancel()
        for task in (pumping, watching):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        with contextlib.suppress(RuntimeError):
            await stream.aclose()  # type: ignore[attr-defined]
        if response.on_close is not None:
            await asyncio.shield(response.on_close())
    if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
        exc = pumping.exception()
        assert exc is not None
        fields = {"request_id": request.request_id, **describe_exception(exc)}
        logger.error("stream relay failed", extra={"fields": fields})


def _log(request: ApiRequest, response: ApiResponse, started: float) -> None:
    fields = {
        "request_id": request.request_id,
        "method": request.method,
        "route": request.route,
        "status": response.status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "streaming": response.stream is not None,
    }
    fields.update(request.log_fields)
    logger.info("request", extra={"fields": fields})
