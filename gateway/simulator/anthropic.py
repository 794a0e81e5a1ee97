"""The simulator's Anthropic Messages surface (``POST /anthropic/v1/messages``)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.simulator.engine import Generation, Knobs, SimRequest, SimTool, generate, pieces
from gateway.simulator.replies import Reply, StreamReply, json_reply, sse

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
REFUSAL = "I can't help with that."


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    out = []
    for block in content or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            out.append(block.get("text", ""))
        elif kind == "tool_use":
            out.append(orjson.dumps(block.get("input") or {}).decode())
        elif kind == "tool_result":
            inner = block.get("content")
            out.append(inner if isinstance(inner, str) else _text_of(inner))
    return " ".join(out)


def parse(model: str, knobs: Knobs, body: dict[str, Any]) -> SimRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: field required")
    if "max_tokens" not in body:
        raise ValueError("max_tokens: Field required")
    texts: list[str] = []
    # cache_control breakpoints, by the message they close (index into texts; -1: the tools)
    breakpoints: list[int] = []
    if any(isinstance(t, dict) and t.get("cache_control") for t in body.get("tools") or ()):
        breakpoints.append(-1)
    system = body.get("system")
    if system:
        texts.append(system if isinstance(system, str) else _text_of(system))
        if _marked(system):
            breakpoints.append(len(texts) - 1)
    last_user = ""
    last_is_tool_result = False
    for message in messages:
        text = _text_of(message.get("content"))
        texts.append(text)
        if _marked(message.get("content")):
            breakpoints.append(len(texts) - 1)
        if message.get("role") == "user":
            content = message.get("content")
            last_is_tool_result = isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") == "tool_result" for b in content
            )
            last_user = text
    tools = [SimTool(t["name"], t.get("input_schema")) for t in body.get("tools") or ()]
    choice = body.get("tool_choice") or {}
    tool_choice: str | dict[str, str] | None = {
        "auto": "auto",
        "any": "required",
        "none": "none",
    }.get(choice.get("type", ""))
    if choice.get("type") == "tool":
        tool_choice = {"name": choice.get("name", "")}
    return SimRequest(
        provider="anthropic",
        model=model,
        knobs=knobs,
        texts=texts,
        last_user=last_user,
        last_is_tool_result=last_is_tool_result,
        prefill=messages[-1].get("role") == "assistant",
        max_tokens=int(body["max_tokens"]),
        tools=tools,
        tools_json=orjson.dumps(body["tools"]).decode() if tools else "",
        tool_choice=tool_choice,
        stream=bool(body.get("stream")),
        breakpoints=tuple(breakpoints),
    )


def _marked(content: Any) -> bool:
    """Whether a system prompt or a message's content carries a cache_control block."""
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("cache_control") for b in content
    )


def _usage(gen: Generation, output: int | None = None, written: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": gen.prompt_tokens - gen.cached_tokens - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": gen.cached_tokens,
        "output_tokens": gen.completion_tokens if output is None else output,
    }


def _content(gen: Generation) -> list[dict[str, Any]]:
    if gen.tool_calls:
        return [
            {
                "type": "tool_use",
                "id": "toolu_" + c.id[5:],
                "name": c.name,
                "input": orjson.loads(c.arguments),
            }
            for c in gen.tool_calls
        ]
    if gen.finish == "content_filter":
        return [{"type": "text", "text": REFUSAL}]
    return [{"type": "text", "text": gen.text or ""}]


def message_reply(request: SimRequest) -> Reply:
    gen = generate(request)
    return json_reply(
        200,
        {
            "id": "msg_" + gen.id_hash,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": _content(gen),
            "stop_reason": _STOP[gen.finish],
            "stop_sequence": None,
            "usage": _usage(gen, written=request.knobs.cache_write),
        },
    )


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    """A ``content_block_start`` event."""
    return sse(
        {"type": "content_block_start", "index": index, "content_block": block},
        "content_block_start",
    )


def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
    """A ``content_block_delta`` event."""
    return sse(
        {"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"
    )


def _block_stop(index: int) -> bytes:
    """A ``content_block_stop`` event."""
    return sse({"type": "content_block_stop", "index": index}, "content_block_stop")


def _tool_use_events(gen: Generation) -> list[bytes]:
    """One ``tool_use`` block per call (a ping after the first start), input as JSON pieces."""
    events: list[bytes] = []
    for index, call in enumerate(gen.tool_calls):
        block = {
            "type": "tool_use",
            "id": "toolu_" + call.id[5:],
            "name": call.name,
            "input": {},
        }
        events.append(_block_start(index, block))
        if index == 0:
            events.append(sse({"type": "ping"}, "ping"))
        events.extend(
            _block_delta(index, {"type": "input_json_delta", "partial_json": piece})
            for piece in pieces(call.arguments)
        )
        events.append(_block_stop(index))
    return events


def _text_events(gen: Generation) -> list[bytes]:
    """One text block (the refusal for a filtered answer), a ping after its start."""
    text = REFUSAL if gen.finish == "content_filter" else gen.text or ""
    events = [_block_start(0, {"type": "text", "text": ""}), sse({"type": "ping"}, "ping")]
    events.extend(_block_delta(0, {"type": "text_delta", "text": piece}) for piece in pieces(text))
    events.append(_block_stop(0))
    return events


def message_stream(request: SimRequest) -> StreamReply:
    """The Messages stream: message_start, the content blocks, message_delta, message_stop."""
    gen = generate(request)
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_" + gen.id_hash,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(gen, output=1, written=request.knobs.cache_write),
        },
    }
    events = [sse(start, "message_start")]
    events.extend(_tool_use_events(gen) if gen.tool_calls else _text_events(gen))
    events.append(
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": _STOP[gen.finish], "stop_sequence": None},
                "usage": {"output_tokens": gen.completion_tokens},
            },
            "message_delta",
        )
    )
    events.append(sse({"type": "message_stop"}, "message_stop"))
    return StreamReply(
        events=events,
        token_start=3,
        terminator=1,
        malformed=b'event: content_block_delta\ndata: {"type": "content_block_delta", "index\n\n',
    )


def _error(err_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": err_type, "message": message}}


def error_reply(
    fault: str,
    *,
    retry_headers: list[tuple[str, str]],
    prompt_tokens: int = 0,
    window: int = 0,
    detail: str = "",
) -> Reply:
    if fault == "429":
        return json_reply(
            429,
            _error(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization. Please retry "
                "after the time in the retry-after header.",
            ),
            retry_headers,
        )
    if fault in ("401", "403"):
        if fault == "403":
            return json_reply(
                403, _error("permission_error", "Your API key does not have permission.")
            )
        return json_reply(401, _error("authentication_error", detail or "invalid x-api-key"))
    if fault == "context":
        return json_reply(
            400,
            _error(
                "invalid_request_error",
                f"prompt is too long: {prompt_tokens} tokens > {window} maximum",
            ),
        )
    if fault == "400":
        return json_reply(400, _error("invalid_request_error", detail or "invalid request"))
    if fault in ("529", "503"):
        return json_reply(int(fault), _error("overloaded_error", "Overloaded"), retry_headers)
    return json_reply(
        int(fault) if fault == "502" else 500, _error("api_error", "Internal server error")
    )
