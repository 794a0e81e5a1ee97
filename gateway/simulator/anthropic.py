"""The simulator's Anthropic Messages surface (``POST /anthropic/v1/messages``).

Extended thinking as the real API does it: ``thinking`` enabled (budget >= 1024 and under
``max_tokens``, else a 400) starts the answer with a thinking block, its text signed
(engine.thinking_signature), streamed as thinking_delta then signature_delta; a follow-up whose
final assistant turn (the one with the last tool_use) does not start with its thinking block,
or carries a thinking block whose text or signature changed, is refused with Anthropic's 400.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.simulator.engine import (
    Generation,
    Knobs,
    Rejected,
    SimRequest,
    SimTool,
    generate,
    pieces,
    redacted_data,
    redacted_valid,
    thinking_signature,
)
from gateway.simulator.replies import Reply, StreamReply, json_reply, sse

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
REFUSAL = "I can't help with that."
THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"


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


def parse(model: str, knobs: Knobs, body: dict[str, Any], *, counting: bool = False) -> SimRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: field required")
    if "max_tokens" not in body:
        raise ValueError("max_tokens: Field required")
    texts: list[str] = []
    blocks: list[int] = []  # content blocks per entry of texts (the cache's lookback)
    tool_results = 0
    # cache_control breakpoints, by the message they close (index into texts; -1: the tools)
    breakpoints: list[int] = []
    if any(isinstance(t, dict) and t.get("cache_control") for t in body.get("tools") or ()):
        breakpoints.append(-1)
    system = body.get("system")
    if system:
        texts.append(system if isinstance(system, str) else _text_of(system))
        blocks.append(len(system) if isinstance(system, list) else 1)
        if _marked(system):
            breakpoints.append(len(texts) - 1)
    last_user = ""
    last_is_tool_result = False
    for message in messages:
        content = message.get("content")
        text = _text_of(content)
        texts.append(text)
        blocks.append(len(content) if isinstance(content, list) else 1)
        if _marked(content):
            breakpoints.append(len(texts) - 1)
        if message.get("role") == "user":
            results = sum(
                isinstance(b, dict) and b.get("type") == "tool_result"
                for b in (content if isinstance(content, list) else ())
            )
            tool_results += results
            last_is_tool_result = results > 0
            last_user = text
    thinking = _thinking(body, counting=counting)
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
        tool_results=tool_results,
        prefill=messages[-1].get("role") == "assistant",
        max_tokens=int(body["max_tokens"]),
        tools=tools,
        tools_json=orjson.dumps(body["tools"]).decode() if tools else "",
        tool_choice=tool_choice,
        stream=bool(body.get("stream")),
        breakpoints=tuple(breakpoints),
        blocks=tuple(blocks),
        thinking=thinking,
    )


def _thinking(body: dict[str, Any], *, counting: bool) -> bool:
    """Whether extended thinking is on; its budget and the conversation's thinking blocks
    checked as the real API checks them (``Rejected`` with its message)."""
    config = body.get("thinking")
    if not isinstance(config, dict) or config.get("type") != "enabled":
        return False
    budget = config.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        raise Rejected(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
    if not counting and int(body["max_tokens"]) <= budget:
        raise Rejected(
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
            f"documentation at {THINKING_DOCS}#max-tokens-and-context-window-size"
        )
    messages = body["messages"]
    for index, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        for position, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            where = f"messages.{index}.content.{position}"
            if kind == "thinking" and block.get("signature") != thinking_signature(
                str(block.get("thinking"))
            ):
                raise Rejected(f"{where}: Invalid `signature` in `thinking` block")
            if kind == "redacted_thinking" and not redacted_valid(str(block.get("data"))):
                raise Rejected(f"{where}: Invalid `data` in `redacted_thinking` block")
    final = _final_tool_turn(messages)
    if final is not None:
        index, content = final
        first = content[0].get("type") if content and isinstance(content[0], dict) else None
        if first not in ("thinking", "redacted_thinking"):
            raise Rejected(
                f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                f"but found `{first}`. When `thinking` is enabled, a final `assistant` message "
                "must start with a thinking block (preceeding the lastmost set of `tool_use` and "
                "`tool_result` blocks). We recommend you include thinking blocks from previous "
                "turns. To avoid this requirement, disable `thinking`. Please consult our "
                f"documentation at {THINKING_DOCS}"
            )
    return True


def _final_tool_turn(messages: list[Any]) -> tuple[int, list[Any]] | None:
    """The last assistant turn, with its index, when it called tools and the conversation
    continues from its results (the turn the real API wants to start with thinking)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_use" for b in content
        ):
            return index, content
        return None
    return None


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


def _reasoning_block(gen: Generation) -> dict[str, Any]:
    """The answer's thinking block, signed (or redacted, for Anthropic's trigger string)."""
    text = gen.thinking or ""
    if gen.redacted:
        return {"type": "redacted_thinking", "data": redacted_data(text)}
    return {"type": "thinking", "thinking": text, "signature": thinking_signature(text)}


def _content(gen: Generation) -> list[dict[str, Any]]:
    if gen.thinking is not None and gen.finish != "content_filter":
        return [_reasoning_block(gen), *_answer(gen)]
    return _answer(gen)


def _answer(gen: Generation) -> list[dict[str, Any]]:
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


def _thinking_events(gen: Generation) -> list[bytes]:
    """Block 0: the thinking block (a ping after its start), its text as thinking_delta
    pieces, then its signature_delta; or a redacted_thinking block, whole in its start."""
    block = _reasoning_block(gen)
    if block["type"] == "redacted_thinking":
        return [_block_start(0, block), sse({"type": "ping"}, "ping"), _block_stop(0)]
    text = block["thinking"]
    events = [
        _block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        sse({"type": "ping"}, "ping"),
    ]
    events.extend(
        _block_delta(0, {"type": "thinking_delta", "thinking": piece}) for piece in pieces(text)
    )
    events.append(_block_delta(0, {"type": "signature_delta", "signature": block["signature"]}))
    events.append(_block_stop(0))
    return events


def _tool_use_events(gen: Generation, first: int = 0) -> list[bytes]:
    """One ``tool_use`` block per call from block ``first`` (a ping after the first start
    when it is block 0), input as JSON pieces."""
    events: list[bytes] = []
    for offset, call in enumerate(gen.tool_calls):
        index = first + offset
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


def _text_events(gen: Generation, index: int = 0) -> list[bytes]:
    """One text block (the refusal for a filtered answer), a ping after its start when it is
    block 0."""
    text = REFUSAL if gen.finish == "content_filter" else gen.text or ""
    events = [_block_start(index, {"type": "text", "text": ""})]
    if index == 0:
        events.append(sse({"type": "ping"}, "ping"))
    events.extend(
        _block_delta(index, {"type": "text_delta", "text": piece}) for piece in pieces(text)
    )
    events.append(_block_stop(index))
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
    first = 0
    if gen.thinking is not None and gen.finish != "content_filter":
        events.extend(_thinking_events(gen))
        first = 1
    events.extend(_tool_use_events(gen, first) if gen.tool_calls else _text_events(gen, first))
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
