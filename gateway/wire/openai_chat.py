"""OpenAI Chat Completions: parse ``POST /v1/chat/completions`` bodies and render responses and
stream chunks (``chat.completion`` / ``chat.completion.chunk``)."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.providers.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ContentPart,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
    Usage,
)
from gateway.wire.common import (
    Inbound,
    as_dict,
    check_logit_bias,
    check_metadata,
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
    reject_unknown,
    require_model,
    require_str,
    type_name,
)
from routing.eligibility import CAP_JSON_SCHEMA, CAP_REASONING, CAP_TOOLS, CAP_VISION

ROLES = ("system", "developer", "user", "assistant", "tool")

# Accepted and passed to adapters untouched (``ChatRequest.extra``).
PASSTHROUGH = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "metadata",
        "service_tier",
        "prediction",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
    }
)
KNOWN = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "logprobs",
        "top_logprobs",
        "user",
        "stream",
        "stream_options",
        "reasoning_effort",
        "store",
        "megarouter",
    }
    | PASSTHROUGH
)


def parse_chat(data: dict[str, Any]) -> Inbound:
    reject_unknown(data, KNOWN)
    check_metadata(data)
    check_logit_bias(data)
    model = require_model(data)
    if data.get("store") is True:
        raise UnsupportedParameter(
            "'store' is not supported: this gateway keeps no prompts or completions.",
            param="store",
        )
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
    inbound = Inbound(model=model, chat=ChatRequest(messages=[]))
    inbound.chat.messages = [
        parse_message(raw, f"messages[{i}]", inbound) for i, raw in enumerate(raw_messages)
    ]
    parse_sampling(data, inbound.chat)
    parse_tools(data, inbound)
    parse_response_format(data, inbound)
    chat = inbound.chat
    chat.logprobs = get_bool(data, "logprobs")
    chat.top_logprobs = get_int(data, "top_logprobs", minimum=0, maximum=20)
    if chat.top_logprobs is not None and not chat.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    chat.user = get_str(data, "user")
    chat.stream = bool(get_bool(data, "stream"))
    options = get_dict(data, "stream_options")
    if options is not None:
        if not chat.stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        reject_unknown(
            options, frozenset({"include_usage", "include_obfuscation"}), "stream_options."
        )
        chat.include_usage = bool(
            get_bool(options, "include_usage", "stream_options.include_usage")
        )
    chat.reasoning_effort = get_choice(
        data, "reasoning_effort", ("none", "minimal", "low", "medium", "high", "xhigh")
    )
    if chat.reasoning_effort is not None and chat.reasoning_effort != "none":
        inbound.need(CAP_REASONING, "reasoning_effort")
    chat.extra = {key: data[key] for key in PASSTHROUGH if data.get(key) is not None}
    inbound.override = parse_override(data)
    return inbound


def parse_sampling(data: dict[str, Any], chat: ChatRequest) -> None:
    max_tokens = get_int(data, "max_tokens", minimum=1)
    max_completion = get_int(data, "max_completion_tokens", minimum=1)
    chat.max_tokens = max_completion if max_completion is not None else max_tokens
    chat.temperature = get_number(data, "temperature", minimum=0, maximum=2)
    chat.top_p = get_number(data, "top_p", minimum=0, maximum=1)
    chat.stop = get_stop(data)
    chat.seed = get_int(data, "seed")
    chat.n = get_int(data, "n", minimum=1, maximum=128) or 1


def parse_message(raw: Any, param: str, inbound: Inbound) -> Message:
    raw = as_dict(raw, param)
    role = raw.get("role")
    if role is None:
        raise missing(f"{param}.role")
    if role not in ROLES:
        raise InvalidRequest(
            f"Invalid value for '{param}.role': {_quote_role(role)} is not one of "
            f"{', '.join(ROLES)}.",
            param=f"{param}.role",
            code="invalid_value",
        )
    name = get_str(raw, "name", f"{param}.name")
    content = parse_content(raw.get("content"), f"{param}.content", role, inbound)
    message = Message(role=role, content=content, name=name)
    if role == "assistant":
        calls = get_list(raw, "tool_calls", f"{param}.tool_calls")
        if calls:
            message.tool_calls = [
                _tool_call(call, f"{param}.tool_calls[{i}]") for i, call in enumerate(calls)
            ]
        if content is None and not message.tool_calls:
            raise missing(f"{param}.content")
    elif role == "tool":
        message.tool_call_id = get_str(raw, "tool_call_id", f"{param}.tool_call_id", required=True)
        if content is None:
            raise missing(f"{param}.content")
    elif content is None:
        raise missing(f"{param}.content")
    return message


def _quote_role(role: Any) -> str:
    # Role names are short protocol words, never content; still bound what we echo.
    return repr(role)[:40] if isinstance(role, str) else type_name(role)


def _tool_call(raw: Any, param: str) -> ToolCall:
    raw = as_dict(raw, param)
    call_type = raw.get("type", "function")
    if call_type != "function":
        raise InvalidRequest(
            f"'{param}.type' must be 'function'.", param=f"{param}.type", code="invalid_value"
        )
    function = get_dict(raw, "function", f"{param}.function")
    if function is None:
        raise missing(f"{param}.function")
    return ToolCall(
        id=require_str(raw, "id", f"{param}.id"),
        name=require_str(function, "name", f"{param}.function.name"),
        arguments=get_str(function, "arguments", f"{param}.function.arguments") or "",
    )


def parse_content(
    value: Any, param: str, role: str, inbound: Inbound
) -> str | list[ContentPart] | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidRequest(
            f"Invalid type for '{param}': expected a string or an array of content parts, "
            f"but got {type_name(value)}.",
            param=param,
            code="invalid_type",
        )
    parts: list[ContentPart] = []
    for index, raw in enumerate(value):
        part_param = f"{param}[{index}]"
        raw = as_dict(raw, part_param)
        kind = raw.get("type")
        if kind == "text":
            parts.append(
                ContentPart(type="text", text=require_str(raw, "text", f"{part_param}.text"))
            )
        elif kind == "refusal" and role == "assistant":
            parts.append(
                ContentPart(type="text", text=require_str(raw, "refusal", f"{part_param}.refusal"))
            )
        elif kind == "image_url":
            if role not in ("user",):
                raise InvalidRequest(
                    f"Image content is only allowed in user messages ('{part_param}').",
                    param=part_param,
                )
            image = get_dict(raw, "image_url", f"{part_param}.image_url")
            if image is None:
                raise missing(f"{part_param}.image_url")
            url = require_str(image, "url", f"{part_param}.image_url.url")
            if not url.startswith(("http://", "https://", "data:image/")):
                raise InvalidRequest(
                    f"'{part_param}.image_url.url' must be an http(s) URL or a data:image/ URI.",
                    param=f"{part_param}.image_url.url",
                    code="invalid_value",
                )
            detail = get_choice(
                image, "detail", ("auto", "low", "high"), f"{part_param}.image_url.detail"
            )
            parts.append(ContentPart(type="image", image_url=url, detail=detail))
            inbound.need(CAP_VISION, part_param)
        elif kind is None:
            raise missing(f"{part_param}.type")
        else:
            raise UnsupportedParameter(
                f"Content part type {_quote_role(kind)} is not supported in '{part_param}' "
                "(supported: text, image_url).",
                param=f"{part_param}.type",
            )
    return parts


def parse_tools(data: dict[str, Any], inbound: Inbound) -> None:
    chat = inbound.chat
    tools = get_list(data, "tools")
    if tools:
        chat.tools = []
        for index, raw in enumerate(tools):
            param = f"tools[{index}]"
            raw = as_dict(raw, param)
            if raw.get("type") != "function":
                raise UnsupportedParameter(
                    f"'{param}.type' must be 'function'.", param=f"{param}.type"
                )
            function = get_dict(raw, "function", f"{param}.function")
            if function is None:
                raise missing(f"{param}.function")
            chat.tools.append(_tool(function, f"{param}.function"))
        inbound.need(CAP_TOOLS, "tools")
    choice = data.get("tool_choice")
    if choice is not None:
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise InvalidRequest(
                    "Invalid value for 'tool_choice': expected none, auto, required or "
                    "a named function.",
                    param="tool_choice",
                    code="invalid_value",
                )
            chat.tool_choice = choice
        elif isinstance(choice, dict):
            function = get_dict(choice, "function", "tool_choice.function")
            if choice.get("type") != "function" or function is None:
                raise InvalidRequest(
                    '\'tool_choice\' object must be {"type": "function", "function": '
                    '{"name": ...}}.',
                    param="tool_choice",
                    code="invalid_value",
                )
            chat.tool_choice = {"name": require_str(function, "name", "tool_choice.function.name")}
        else:
            raise InvalidRequest(
                "Invalid type for 'tool_choice'.", param="tool_choice", code="invalid_type"
            )
        if chat.tool_choice != "none" and not chat.tools:
            raise InvalidRequest(
                "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice"
            )
        if isinstance(chat.tool_choice, dict) and chat.tools:
            names = {tool.name for tool in chat.tools}
            if chat.tool_choice["name"] not in names:
                raise InvalidRequest(
                    "'tool_choice' names a function that is not in 'tools'.",
                    param="tool_choice.function.name",
                    code="invalid_value",
                )
    chat.parallel_tool_calls = get_bool(data, "parallel_tool_calls")


def _tool(function: dict[str, Any], param: str) -> Tool:
    name = require_str(function, "name", f"{param}.name")
    if not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
        raise InvalidRequest(
            f"Invalid '{param}.name': use 1-64 letters, digits, underscores or dashes.",
            param=f"{param}.name",
            code="invalid_value",
        )
    return Tool(
        name=name,
        description=get_str(function, "description", f"{param}.description"),
        parameters=get_dict(function, "parameters", f"{param}.parameters"),
        strict=get_bool(function, "strict", f"{param}.strict"),
    )


def parse_response_format(data: dict[str, Any], inbound: Inbound) -> None:
    raw = get_dict(data, "response_format")
    if raw is None:
        return
    kind = get_choice(raw, "type", ("text", "json_object", "json_schema"), "response_format.type")
    if kind is None:
        raise missing("response_format.type")
    inbound.chat.response_format = parse_format_object(raw, kind, "response_format", inbound)


def parse_format_object(
    raw: dict[str, Any], kind: str, param: str, inbound: Inbound, *, flat: bool = False
) -> ResponseFormat | None:
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    # json_schema: nested under "json_schema" in Chat Completions, flat in the Responses API.
    spec = raw if flat else get_dict(raw, "json_schema", f"{param}.json_schema")
    spec_param = param if flat else f"{param}.json_schema"
    if spec is None:
        raise missing(spec_param)
    schema = get_dict(spec, "schema", f"{spec_param}.schema")
    if schema is None:
        raise missing(f"{spec_param}.schema")
    inbound.need(CAP_JSON_SCHEMA, param)
    return ResponseFormat(
        type="json_schema",
        name=require_str(spec, "name", f"{spec_param}.name"),
        schema=schema,
        strict=get_bool(spec, "strict", f"{spec_param}.strict"),
    )


# ---------------------------------------------------------------- rendering


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _finish(reason: str | None) -> str | None:
    # "error" is internal; a failed stream ends with an error event instead.
    return "stop" if reason == "error" else reason


def tool_calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in calls
    ]


def _content(message: Message) -> str | None:
    """The answer's text; None when it has none (tool calls, or reasoning only)."""
    content = message.content
    if isinstance(content, list) and not any(part.type == "text" for part in content):
        return None
    return message.text() if content is not None else None


def render_chat(response: ChatResponse, model_id: str) -> dict[str, Any]:
    """``chat.completion``; the provider's reasoning (Anthropic thinking, DeepSeek reasoning)
    goes in ``message.reasoning_content``, as DeepSeek and OpenRouter send it, never in
    ``content``."""
    choices = []
    for choice in response.choices:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": _content(choice.message),
            "refusal": choice.message.refusal,
        }
        reasoning = choice.message.thinking_text()
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        if choice.message.tool_calls:
            message["tool_calls"] = tool_calls_json(choice.message.tool_calls)
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "finish_reason": _finish(choice.finish_reason) or "stop",
                "logprobs": choice.logprobs,
            }
        )
    body: dict[str, Any] = {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created,
        "model": model_id,
        "choices": choices,
        "usage": usage_json(response.usage),
    }
    if response.system_fingerprint:
        body["system_fingerprint"] = response.system_fingerprint
    return body


def render_chunk(chunk: ChatChunk, model_id: str, *, include_usage: bool) -> dict[str, Any]:
    choices = []
    for choice in chunk.choices:
        delta: dict[str, Any] = {}
        if choice.delta.role is not None:
            delta["role"] = choice.delta.role
        if choice.delta.content is not None:
            delta["content"] = choice.delta.content
        if choice.delta.thinking:
            delta["reasoning_content"] = choice.delta.thinking
        if choice.delta.refusal is not None:
            delta["refusal"] = choice.delta.refusal
        if choice.delta.tool_calls:
            calls = []
            for call in choice.delta.tool_calls:
                item: dict[str, Any] = {"index": call.index}
                if call.id is not None:
                    item["id"] = call.id
                    item["type"] = "function"
                function: dict[str, str] = {}
                if call.name is not None:
                    function["name"] = call.name
                if call.arguments is not None:
                    function["arguments"] = call.arguments
                if function:
                    item["function"] = function
                calls.append(item)
            delta["tool_calls"] = calls
        entry: dict[str, Any] = {
            "index": choice.index,
            "delta": delta,
            "finish_reason": _finish(choice.finish_reason),
        }
        if choice.logprobs is not None:
            entry["logprobs"] = choice.logprobs
        choices.append(entry)
    body: dict[str, Any] = {
        "id": chunk.id,
        "object": "chat.completion.chunk",
        "created": chunk.created,
        "model": model_id,
        "choices": choices,
    }
    if include_usage:
        body["usage"] = usage_json(chunk.usage) if chunk.usage is not None else None
    return body
