"""Transport-neutral request and response types for the ``/v1/`` handlers, so the same
handlers run behind the raw ASGI front door (:mod:`gateway.api.asgi`, production) and behind a
Django async view (:mod:`gateway.api.views`: ``runserver``, WSGI, Django's test client)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

JSON = "application/json"
SSE = "text/event-stream"


@dataclass(slots=True)
class ApiRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    request_id: str
    client_ip: str | None = None
    log_fields: dict[str, Any] = field(default_factory=dict)
    route: str | None = None  # the matched route template (for logs and metrics)
    recorded: bool = False  # the per-request metrics were written by the handler
    key: Any = None  # the caller's KeyContext once authenticated (failures are counted per key)
    failed_model: str = ""  # for the failure count: the model and provider last tried
    failed_provider: str = ""
    call: Any = None  # the pipeline's CallContext once the body parsed (traces read it)
    steps: list[Any] | None = None  # (name, start, end) of traced steps; None: tracing is off
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class ApiResponse:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    # Streaming: an async iterator of encoded SSE events; ``on_close`` runs when the stream
    # ends for any reason (completion, error, client disconnect).
    stream: AsyncIterator[bytes] | None = None
    on_close: Callable[[], Any] | None = None

    @classmethod
    def json(
        cls, data: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> ApiResponse:
        return cls(status=status, body=orjson.dumps(data), headers=headers or {})


def sse_data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
