"""What a simulator handler returns: a whole response, or a stream of framed events."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


@dataclass(slots=True)
class StreamReply:
    events: list[bytes]  # each already framed (SSE text or an event stream message)
    token_start: int  # index of the first content-token event
    terminator: int  # how many trailing events make the terminator (dropped by no_done)
    malformed: bytes  # a broken event of this framing (injected by fault=malformed)
    content_type: str = "text/event-stream"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(status: int, data: object, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, orjson.dumps(data), headers or [])


def sse(data: object, event: str | None = None) -> bytes:
    payload = b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"
    if event is not None:
        return b"event: " + event.encode() + b"\n" + payload
    return payload
