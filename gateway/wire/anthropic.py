"""Anthropic Messages inbound (``POST /v1/messages``), so Anthropic-SDK clients and coding
agents can use the gateway: parse into the normalized chat request, render ``message``
objects and the Messages streaming events."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import orjson

from gateway.errors import GatewayError, InvalidRequest, UnsupportedParameter, anthropic_error_json
from gateway.providers.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ContentPart,
    Message,
    ThinkingConfig,
    Tool,
    ToolCall,
    Usage,
)
from gateway.wire.common import (
    Inbound,
    as_dict,
    get_bool,
    get_choice,
    get_dict,
    get_int,
    get_list,
    get_number,
    get_stop,
    get_str,
    missing,
    parse_override,
    require_model,
    require_str,
    type_name,
)
from routing.eligibility import CAP_REASONING, CAP_TOOLS, CAP_VISION

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}


# The Messages API's request fields (Anthropic refuses any other with a 400).
KNOWN = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_k",
        "top_p",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "megarouter",
    }
)
# Anthropic's prompt-cache breakpoints: at most this many per request, each
# {"type": "ephemeral"} with an optional "ttl". Anthropic also offers "1h", billed at twice
# the input price, a price the catalog does not hold: refused rather than charged wrongly.
MAX_CACHE_BREAKPOINTS = 4
CACHE_TTLS = ("5m",)
# Extended thinking: the smallest budget Anthropic takes (and it must stay under max_tokens).
MIN_THINKING_BUDGET = 1024
THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"


# The token-counting request's fields (``POST /v1/messages/count_tokens``): the message
# fields that change the prompt, no generation settings.
COUNT_KNOWN = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "megarouter"}
)
# Real fields that act on Anthropic's side (server tools, containers, context editing): a
# gateway in front of several providers cannot honour them.
NOT_SUPPORTED = frozenset({"container", "mcp_servers", "context_management"})


def _reject_extra(data: dict[str, Any], known: frozenset[str], prefix: str = "") -> None:
    for key in data:
        if key in NOT_SUPPORTED and not prefix:
            raise UnsupportedParameter(f"'{key}' is not supported by this gateway.", param=key)
        if key not in known:
            raise InvalidRequest(
                f"{prefix}{key}: Extra inputs are not permitted",
                param=f"{prefix}{key}",
                code="unknown_parameter",
            )


def parse_count_tokens(data: dict[str, Any]) -> Inbound:
    """A ``count_tokens`` body: the same fields as a message, checked the same way, without
    ``max_tokens`` or any generation setting."""
    _reject_extra(data, COUNT_KNOWN)
    inbound = parse_messages({**data, "max_tokens": 1}, counting=True)
    inbound.chat.max_tokens = None
    return inbound


def parse_messages(data: dict[str, Any], *, counting: bool = False) -> Inbound:
    """A message body; ``counting``: a count_tokens body, which has no ``max_tokens`` for a
    thinking budget to stay under."""
    _reject_extra(data, KNOWN)
    model = require_model(data)
    max_tokens = get_int(data, "max_tokens", minimum=1)
    if max_tokens is None:
        raise missing("max_tokens")
    raw_messages = data.get("messages")
    if raw_messages is None:
        raise missing("messages")
    if not isinstance(raw_messages, list):
        raise InvalidRequest(
            f"Invalid type for 'messages': expected an array, but got {type_name(raw_messages)}.",
            param="messages",
            code="invalid_type",
        )
    if not raw_messages:
        raise InvalidRequest(
            "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    inbound = Inbound(model=model, chat=ChatRequest(messages=[], max_tokens=max_tokens))
    messages = inbound.chat.messages
    system = data.get("system")
    if system is not None:
        if isinstance(system, str):
            if system:
                messages.append(Message(role="system", content=system))
        elif isinstance(system, list):
            blocks = [as_dict(block, f"system[{i}]") for i, block in enumerate(system)]
            # the blocks as parts, each with its breakpoint: the Anthropic adapter sends them
            # as they came (other formats read the text, the parts joined)
            parts = [
                ContentPart(
                    type="text",
                    text=require_str(block, "text", f"system[{i}].text"),
                    cache_control=_cache_control(block, f"system[{i}]", inbound),
                )
                for i, block in enumerate(blocks)
            ]
            messages.append(Message(role="system", content=parts))
        else:
            raise InvalidRequest(
                "Invalid type for 'system': expected a string or an array of text blocks.",
                param="system",
                code="invalid_type",
            )
    for index, raw in enumerate(raw_messages):
        _message(raw, f"messages[{index}]", inbound)
    _tools(data, inbound)
    if inbound.cache_breakpoints > MAX_CACHE_BREAKPOINTS:
        raise InvalidRequest(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {inbound.cache_breakpoints}.",
            param="cache_control",
            code="invalid_value",
        )
    chat = inbound.chat
    chat.temperature = get_number(data, "temperature", minimum=0, maximum=1)
    chat.top_p = get_number(data, "top_p", minimum=0, maximum=1)
    chat.top_k = get_int(data, "top_k", minimum=0)
    chat.stop = get_stop(data, "stop_sequences", max_items=16)
    chat.stream = bool(get_bool(data, "stream"))
    chat.include_usage = chat.stream
    metadata = get_dict(data, "metadata")
    if metadata is not None:
        _reject_extra(metadata, frozenset({"user_id"}), "metadata.")
        chat.user = get_str(metadata, "user_id", "metadata.user_id")
    get_choice(data, "service_tier", ("auto", "standard_only"))
    chat.thinking = _thinking(data, None if counting else max_tokens)
    if chat.thinking is not None and chat.thinking.type == "enabled":
        inbound.need(CAP_REASONING, "thinking")
    inbound.override = parse_override(data)
    return inbound


def _thinking(data: dict[str, Any], max_tokens: int | None) -> ThinkingConfig | None:
    """``thinking``, checked as Anthropic checks it: ``{"type": "disabled"}`` or
    ``{"type": "enabled", "budget_tokens": N}`` with 1024 <= N < ``max_tokens``."""
    raw = get_dict(data, "thinking")
    if raw is None:
        return None
    kind = raw.get("type")
    if kind is None:
        raise missing("thinking.type")
    if kind == "disabled":
        _reject_extra(raw, frozenset({"type"}), "thinking.")
        return ThinkingConfig(type="disabled")
    if kind != "enabled":
        raise InvalidRequest(
            "Invalid value for 'thinking.type': expected enabled or disabled.",
            param="thinking.type",
            code="invalid_value",
        )
    _reject_extra(raw, frozenset({"type", "budget_tokens"}), "thinking.")
    budget = get_int(raw, "budget_tokens", "thinking.budget_tokens")
    if budget is None:
        raise missing("thinking.budget_tokens")
    if budget < MIN_THINKING_BUDGET:
        raise InvalidRequest(
            f"thinking.budget_tokens: Input should be greater than or equal to "
            f"{MIN_THINKING_BUDGET}",
            param="thinking.budget_tokens",
            code="invalid_value",
        )
    if max_tokens is not None and max_tokens <= budget:
        raise InvalidRequest(
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
            f"documentation at {THINKING_DOCS}#max-tokens-and-context-window-size",
            param="thinking.budget_tokens",
            code="invalid_value",
        )
    return ThinkingConfig(type="enabled", budget_tokens=budget)


def _message(raw: Any, param: str, inbound: Inbound) -> None:
    """Parse one ``messages[i]`` entry into the chat's messages."""
    raw = as_dict(raw, param)
    role = _role(raw, param)
    content = raw.get("content")
    if content is None:
        raise missing(f"{param}.content")
    messages = inbound.chat.messages
    if isinstance(content, str):
        messages.append(Message(role=role, content=content))
        return
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid type for '{param}.content': expected a string or an array of blocks.",
            param=f"{param}.content",
            code="invalid_type",
        )
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for index, block in enumerate(content):
        block_param = f"{param}.content[{index}]"
        block = as_dict(block, block_param)
        kind = block.get("type")
        mark = _cache_control(block, block_param, inbound)
        if kind == "text":
            text = require_str(block, "text", f"{block_param}.text")
            parts.append(ContentPart(type="text", text=text, cache_control=mark))
        elif kind == "image":
            part = _image(block, block_param)
            part.cache_control = mark
            parts.append(part)
            inbound.need(CAP_VISION, block_param)
        elif kind == "tool_use" and role == "assistant":
            call = _tool_use(block, block_param)
            call.cache_control = mark
            calls.append(call)
        elif kind == "tool_result" and role == "user":
            result = _tool_result(block, block_param)
            result.cache_control = mark
            results.append(result)
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            parts.append(_thinking_block(block, block_param, kind, mark))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # reasoning in a user turn means nothing to any provider
        elif kind is None:
            raise missing(f"{block_param}.type")
        else:
            raise UnsupportedParameter(
                f"Content block type is not supported in '{block_param}.type' "
                "(supported: text, image, tool_use, tool_result).",
                param=f"{block_param}.type",
            )
    _add_turn(messages, role, parts, calls, results, param)


def _thinking_block(
    block: dict[str, Any], param: str, kind: str, mark: dict[str, str] | None
) -> ContentPart:
    """An assistant turn's ``thinking`` / ``redacted_thinking`` block, kept exactly (Anthropic
    checks its signature when it comes back); it takes no ``cache_control``."""
    if mark is not None:
        raise InvalidRequest(
            f"{param}.cache_control: Extra inputs are not permitted",
            param=f"{param}.cache_control",
            code="unknown_parameter",
        )
    if kind == "redacted_thinking":
        _reject_extra(block, frozenset({"type", "data"}), f"{param}.")
        return ContentPart(
            type="redacted_thinking", data=require_str(block, "data", f"{param}.data")
        )
    _reject_extra(block, frozenset({"type", "thinking", "signature"}), f"{param}.")
    return ContentPart(
        type="thinking",
        thinking=require_str(block, "thinking", f"{param}.thinking"),
        signature=require_str(block, "signature", f"{param}.signature"),
    )


def _cache_control(block: dict[str, Any], param: str, inbound: Inbound) -> dict[str, str] | None:
    """A block's ``cache_control`` breakpoint, checked as Anthropic checks it, and counted."""
    raw = block.get("cache_control")
    if raw is None:
        return None
    where = f"{param}.cache_control"
    control = as_dict(raw, where)
    _reject_extra(control, frozenset({"type", "ttl"}), f"{where}.")
    if control.get("type") != "ephemeral":
        raise InvalidRequest(
            f"Invalid value for '{where}.type': expected ephemeral.",
            param=f"{where}.type",
            code="invalid_value",
        )
    mark = {"type": "ephemeral"}
    if control.get("ttl") == "1h":
        raise UnsupportedParameter(
            f"'{where}.ttl' 1h is not supported by this gateway (the catalog has no price for "
            "1-hour cache writes); leave it out for the 5-minute cache.",
            param=f"{where}.ttl",
        )
    ttl = get_choice(control, "ttl", CACHE_TTLS, f"{where}.ttl")
    if ttl is not None:
        mark["ttl"] = ttl
    inbound.cache_breakpoints += 1
    return mark


def _role(raw: dict[str, Any], param: str) -> Literal["user", "assistant"]:
    """The message's role: user or assistant."""
    role = raw.get("role")
    if role is None:
        raise missing(f"{param}.role")
    if role not in ("user", "assistant"):
        raise InvalidRequest(
            f"Invalid value for '{param}.role': expected user or assistant.",
            param=f"{param}.role",
            code="invalid_value",
        )
    return role


def _tool_use(block: dict[str, Any], param: str) -> ToolCall:
    """An assistant ``tool_use`` block as a tool call (its input re-encoded as JSON text)."""
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise InvalidRequest(
            f"'{param}.input' must be an object.", param=f"{param}.input", code="invalid_type"
        )
    return ToolCall(
        id=require_str(block, "id", f"{param}.id"),
        name=require_str(block, "name", f"{param}.name"),
        arguments=orjson.dumps(arguments).decode(),
    )


def _tool_result(block: dict[str, Any], param: str) -> Message:
    """A user ``tool_result`` block as a tool message."""
    return Message(
        role="tool",
        content=_result_text(block, param),
        tool_call_id=require_str(block, "tool_use_id", f"{param}.tool_use_id"),
    )


def _add_turn(
    messages: list[Message],
    role: Literal["user", "assistant"],
    parts: list[ContentPart],
    calls: list[ToolCall],
    results: list[Message],
    param: str,
) -> None:
    """Append one message's blocks: tool results first (they answer the previous assistant
    turn), then the turn itself; a user turn with neither is an error."""
    messages.extend(results)
    if role == "assistant":
        if parts or calls:
            messages.append(
                Message(role="assistant", content=parts or None, tool_calls=calls or None)
            )
    elif parts:
        messages.append(Message(role="user", content=parts))
    elif not results:
        raise InvalidRequest(
            f"'{param}.content' must not be empty.", param=f"{param}.content", code="empty_array"
        )


def _image(block: dict[str, Any], param: str) -> ContentPart:
    source = get_dict(block, "source", f"{param}.source")
    if source is None:
        raise missing(f"{param}.source")
    kind = source.get("type")
    if kind == "base64":
        media = require_str(source, "media_type", f"{param}.source.media_type")
        data = require_str(source, "data", f"{param}.source.data")
        return ContentPart(type="image", image_url=f"data:{media};base64,{data}")
    if kind == "url":
        return ContentPart(
            type="image", image_url=require_str(source, "url", f"{param}.source.url")
        )
    raise UnsupportedParameter(
        f"'{param}.source.type' must be base64 or url.", param=f"{param}.source.type"
    )


def _result_text(block: dict[str, Any], param: str) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(
            item.get("text", "")
            for item in content
            if isinstance(item, dict) and item.get("type") == "text"
        )
    else:
        raise InvalidRequest(
            f"Invalid type for '{param}.content'.", param=f"{param}.content", code="invalid_type"
        )
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return text


def _tools(data: dict[str, Any], inbound: Inbound) -> None:
    chat = inbound.chat
    tools = get_list(data, "tools")
    if tools:
        chat.tools = []
        for index, raw in enumerate(tools):
            param = f"tools[{index}]"
            raw = as_dict(raw, param)
            if raw.get("type") not in (None, "custom"):
                raise UnsupportedParameter(
                    f"Server tools are not supported ('{param}.type'); define client tools "
                    "with name and input_schema.",
                    param=f"{param}.type",
                )
            chat.tools.append(
                Tool(
                    name=require_str(raw, "name", f"{param}.name"),
                    description=get_str(raw, "description", f"{param}.description"),
                    parameters=get_dict(raw, "input_schema", f"{param}.input_schema")
                    or {"type": "object", "properties": {}},
                    cache_control=_cache_control(raw, param, inbound),
                )
            )
        inbound.need(CAP_TOOLS, "tools")
    choice = get_dict(data, "tool_choice")
    if choice is None:
        return
    kind = choice.get("type")
    if kind == "auto":
        chat.tool_choice = "auto"
    elif kind == "any":
        chat.tool_choice = "required"
    elif kind == "none":
        chat.tool_choice = "none"
    elif kind == "tool":
        chat.tool_choice = {"name": require_str(choice, "name", "tool_choice.name")}
    else:
        raise InvalidRequest(
            "Invalid 'tool_choice.type': expected auto, any, tool or none.",
            param="tool_choice.type",
            code="invalid_value",
        )
    if get_bool(choice, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use"):
        chat.parallel_tool_calls = False


# ---------------------------------------------------------------- rendering


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": max(
            0, usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
        ),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def _arguments(text: str) -> Any:
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def render_message(response: ChatResponse, model_id: str) -> dict[str, Any]:
    choice = response.choices[0] if response.choices else None
    content: list[dict[str, Any]] = []
    stop_reason = "end_turn"
    if choice is not None:
        parts = choice.message.content
        if isinstance(parts, list) and any(part.reasoning for part in parts):
            content.extend(_blocks_with_thinking(parts))
        else:
            text = choice.message.text()
            if text:
                content.append({"type": "text", "text": text})
        for call in choice.message.tool_calls or []:
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": _arguments(call.arguments),
                }
            )
        stop_reason = STOP_REASONS.get(choice.finish_reason or "stop", "end_turn")
    return {
        "id": _msg_id(response.id),
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(response.usage),
    }


def _thinking_json(part: ContentPart) -> dict[str, Any]:
    if part.type == "redacted_thinking":
        return {"type": "redacted_thinking", "data": part.data or ""}
    return {"type": "thinking", "thinking": part.thinking or "", "signature": part.signature or ""}


def _blocks_with_thinking(parts: list[ContentPart]) -> list[dict[str, Any]]:
    """An answer's reasoning and text blocks in the order the provider gave them."""
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if part.reasoning:
            blocks.append(_thinking_json(part))
        elif part.type == "text" and part.text:
            blocks.append({"type": "text", "text": part.text})
    return blocks


def _msg_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("msg_") else f"msg_{uuid.uuid4().hex}"


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return (
        b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"
    )


class MessagesStream:
    """Turns normalized chunks into Anthropic Messages stream events."""

    def __init__(self) -> None:
        self.block_index = -1
        self.open_kind: str | None = None  # "thinking", "text" or "tool_use"
        self.tool_blocks: dict[int, int] = {}  # tool-call index -> block index
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def start(self, model_id: str) -> list[bytes]:
        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": model_id,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [_event("message_start", {"message": message}), _event("ping", {})]

    def _close(self) -> list[bytes]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        return [_event("content_block_stop", {"index": self.block_index})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        events = self._close()
        self.block_index += 1
        self.open_kind = kind
        events.append(
            _event("content_block_start", {"index": self.block_index, "content_block": block})
        )
        return events

    def _reasoning(self, delta: Any) -> list[bytes]:
        """A delta's reasoning: a redacted_thinking block whole (start, stop), thinking text
        into the open thinking block (a new one after a signature closed the last), the
        signature as its signature_delta, which ends the block."""
        events: list[bytes] = []
        if delta.redacted_thinking is not None:
            events += self._open(
                "redacted_thinking", {"type": "redacted_thinking", "data": delta.redacted_thinking}
            )
            events += self._close()
        if delta.thinking or (delta.signature is not None and self.open_kind != "thinking"):
            if self.open_kind != "thinking":
                events += self._open(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            if delta.thinking:
                events.append(
                    _event(
                        "content_block_delta",
                        {
                            "index": self.block_index,
                            "delta": {"type": "thinking_delta", "thinking": delta.thinking},
                        },
                    )
                )
        if delta.signature is not None:
            events.append(
                _event(
                    "content_block_delta",
                    {
                        "index": self.block_index,
                        "delta": {"type": "signature_delta", "signature": delta.signature},
                    },
                )
            )
            events += self._close()
        return events

    def chunk(self, chunk: ChatChunk) -> list[bytes]:
        events: list[bytes] = []
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if (
                delta.thinking is not None
                or delta.signature is not None
                or delta.redacted_thinking is not None
            ):
                events += self._reasoning(delta)
            if delta.content:
                if self.open_kind != "text":
                    events += self._close()
                    self.block_index += 1
                    self.open_kind = "text"
                    events.append(
                        _event(
                            "content_block_start",
                            {
                                "index": self.block_index,
                                "content_block": {"type": "text", "text": ""},
                            },
                        )
                    )
                events.append(
                    _event(
                        "content_block_delta",
                        {
                            "index": self.block_index,
                            "delta": {"type": "text_delta", "text": delta.content},
                        },
                    )
                )
            for call in delta.tool_calls or []:
                if call.index not in self.tool_blocks:
                    events += self._close()
                    self.block_index += 1
                    self.open_kind = "tool_use"
                    self.tool_blocks[call.index] = self.block_index
                    events.append(
                        _event(
                            "content_block_start",
                            {
                                "index": self.block_index,
                                "content_block": {
                                    "type": "tool_use",
                                    "id": call.id or f"toolu_{uuid.uuid4().hex[:24]}",
                                    "name": call.name or "",
                                    "input": {},
                                },
                            },
                        )
                    )
                if call.arguments:
                    events.append(
                        _event(
                            "content_block_delta",
                            {
                                "index": self.tool_blocks[call.index],
                                "delta": {
                                    "type": "input_json_delta",
                                    "partial_json": call.arguments,
                                },
                            },
                        )
                    )
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return events

    def finish(self, model_id: str) -> list[bytes]:
        events = self._close()
        usage = _usage(self.usage or Usage())
        events.append(
            _event(
                "message_delta",
                {
                    "delta": {
                        "stop_reason": STOP_REASONS.get(self.finish_reason or "stop", "end_turn"),
                        "stop_sequence": None,
                    },
                    "usage": usage,
                },
            )
        )
        events.append(_event("message_stop", {}))
        return events

    def error(self, error: GatewayError) -> list[bytes]:
        inner = orjson.loads(error_payload(error))
        return [_event("error", {"error": inner})]


def error_payload(error: GatewayError) -> bytes:
    return orjson.dumps(orjson.loads(anthropic_error_json(error))["error"])
