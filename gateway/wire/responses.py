"""OpenAI Responses API (``POST /v1/responses``), stateless: text and function tools, JSON
output formats, streaming as typed ``response.*`` events. The gateway keeps no conversation
state (zero data retention), so ``previous_response_id`` and ``store: true`` are refused."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest, UnsupportedParameter
from gateway.providers.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ContentPart,
    Message,
    Tool,
    ToolCall,
    Usage,
)
from gateway.wire.common import (
    Inbound,
    as_dict,
    check_metadata,
    get_bool,
    get_choice,
    get_dict,
    get_int,
    get_list,
    get_number,
    get_str,
    missing,
    parse_override,
    reject_unknown,
    require_model,
    require_str,
    type_name,
)
from gateway.wire.openai_chat import parse_format_object
from routing.eligibility import CAP_REASONING, CAP_TOOLS, CAP_VISION

PASSTHROUGH = frozenset({"metadata", "service_tier", "safety_identifier", "prompt_cache_key"})
KNOWN = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "temperature",
        "top_p",
        "max_output_tokens",
        "stream",
        "stream_options",
        "user",
        "store",
        "reasoning",
        "previous_response_id",
        "include",
        "truncation",
        "background",
        "top_logprobs",
        "megarouter",
    }
    | PASSTHROUGH
)
INPUT_ROLES = ("user", "system", "developer", "assistant")


def parse_responses(data: dict[str, Any]) -> Inbound:
    reject_unknown(data, KNOWN)
    check_metadata(data)
    model = require_model(data)
    if data.get("previous_response_id") is not None:
        raise UnsupportedParameter(
            "'previous_response_id' is not supported: this gateway keeps no conversation state; "
            "send the full conversation in 'input'.",
            param="previous_response_id",
        )
    if data.get("store") is True:
        raise UnsupportedParameter(
            "'store' is not supported: this gateway keeps no prompts or completions.",
            param="store",
        )
    if data.get("background") is True:
        raise UnsupportedParameter("'background' is not supported.", param="background")
    if get_list(data, "include"):
        raise UnsupportedParameter("'include' is not supported.", param="include")
    get_choice(data, "truncation", ("disabled",))
    inbound = Inbound(model=model, chat=ChatRequest(messages=[]))
    messages = inbound.chat.messages
    instructions = get_str(data, "instructions")
    if instructions:
        messages.append(Message(role="system", content=instructions))
    raw_input = data.get("input")
    if raw_input is None:
        raise missing("input")
    if isinstance(raw_input, str):
        messages.append(Message(role="user", content=raw_input))
    elif isinstance(raw_input, list):
        if not raw_input:
            raise InvalidRequest("'input' must not be empty.", param="input", code="empty_array")
        for index, item in enumerate(raw_input):
            _input_item(item, f"input[{index}]", inbound)
    else:
        raise InvalidRequest(
            f"Invalid type for 'input': expected a string or an array, but got "
            f"{type_name(raw_input)}.",
            param="input",
            code="invalid_type",
        )
    chat = inbound.chat
    chat.max_tokens = get_int(data, "max_output_tokens", minimum=1)
    chat.temperature = get_number(data, "temperature", minimum=0, maximum=2)
    chat.top_p = get_number(data, "top_p", minimum=0, maximum=1)
    chat.user = get_str(data, "user")
    chat.stream = bool(get_bool(data, "stream"))
    chat.include_usage = chat.stream
    chat.parallel_tool_calls = get_bool(data, "parallel_tool_calls")
    _tools(data, inbound)
    text = get_dict(data, "text")
    if text is not None:
        fmt = get_dict(text, "format", "text.format")
        if fmt is not None:
            kind = get_choice(
                fmt, "type", ("text", "json_object", "json_schema"), "text.format.type"
            )
            if kind is None:
                raise missing("text.format.type")
            chat.response_format = parse_format_object(fmt, kind, "text.format", inbound, flat=True)
    reasoning = get_dict(data, "reasoning")
    if reasoning is not None:
        chat.reasoning_effort = get_choice(
            reasoning,
            "effort",
            ("none", "minimal", "low", "medium", "high", "xhigh"),
            "reasoning.effort",
        )
        if chat.reasoning_effort not in (None, "none"):
            inbound.need(CAP_REASONING, "reasoning.effort")
    chat.extra = {key: data[key] for key in PASSTHROUGH if data.get(key) is not None}
    inbound.override = parse_override(data)
    if not any(m.role in ("user", "assistant", "tool") for m in messages):
        raise InvalidRequest("'input' must contain at least one message.", param="input")
    return inbound


def _input_item(raw: Any, param: str, inbound: Inbound) -> None:
    raw = as_dict(raw, param)
    messages = inbound.chat.messages
    kind = raw.get("type", "message")
    if kind == "message":
        role = raw.get("role")
        if role is None:
            raise missing(f"{param}.role")
        if role not in INPUT_ROLES:
            raise InvalidRequest(
                f"Invalid value for '{param}.role': expected one of {', '.join(INPUT_ROLES)}.",
                param=f"{param}.role",
                code="invalid_value",
            )
        messages.append(Message(role=role, content=_content(raw, param, role, inbound)))
    elif kind == "function_call":
        call = ToolCall(
            id=require_str(raw, "call_id", f"{param}.call_id"),
            name=require_str(raw, "name", f"{param}.name"),
            arguments=get_str(raw, "arguments", f"{param}.arguments") or "",
        )
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant" and last.tool_calls is not None:
            last.tool_calls.append(call)
        else:
            messages.append(Message(role="assistant", content=None, tool_calls=[call]))
    elif kind == "function_call_output":
        output = raw.get("output")
        if isinstance(output, list):
            output = "".join(part.get("text", "") for part in output if isinstance(part, dict))
        if not isinstance(output, str):
            raise InvalidRequest(
                f"Invalid type for '{param}.output': expected a string.",
                param=f"{param}.output",
                code="invalid_type",
            )
        messages.append(
            Message(
                role="tool",
                content=output,
                tool_call_id=require_str(raw, "call_id", f"{param}.call_id"),
            )
        )
    elif kind == "reasoning":
        return  # reasoning items from an earlier turn carry nothing a stateless call can use
    else:
        raise UnsupportedParameter(
            f"Input item type is not supported in '{param}.type' "
            "(supported: message, function_call, function_call_output).",
            param=f"{param}.type",
        )


def _content(
    raw: dict[str, Any], param: str, role: str, inbound: Inbound
) -> str | list[ContentPart]:
    content = raw.get("content")
    if content is None:
        raise missing(f"{param}.content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid type for '{param}.content': expected a string or an array.",
            param=f"{param}.content",
            code="invalid_type",
        )
    parts: list[ContentPart] = []
    for index, part in enumerate(content):
        part_param = f"{param}.content[{index}]"
        part = as_dict(part, part_param)
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append(
                ContentPart(type="text", text=require_str(part, "text", f"{part_param}.text"))
            )
        elif kind == "input_image":
            url = get_str(part, "image_url", f"{part_param}.image_url")
            if not url:
                raise UnsupportedParameter(
                    f"'{part_param}' needs 'image_url' (file ids are not supported).",
                    param=f"{part_param}.image_url",
                )
            detail = get_choice(part, "detail", ("auto", "low", "high"), f"{part_param}.detail")
            parts.append(ContentPart(type="image", image_url=url, detail=detail))
            inbound.need(CAP_VISION, part_param)
        elif kind is None:
            raise missing(f"{part_param}.type")
        else:
            raise UnsupportedParameter(
                f"Content type is not supported in '{part_param}.type' "
                "(supported: input_text, input_image, output_text).",
                param=f"{part_param}.type",
            )
    return parts


def _tools(data: dict[str, Any], inbound: Inbound) -> None:
    chat = inbound.chat
    tools = get_list(data, "tools")
    if tools:
        chat.tools = []
        for index, raw in enumerate(tools):
            param = f"tools[{index}]"
            raw = as_dict(raw, param)
            if raw.get("type") != "function":
                raise UnsupportedParameter(
                    f"Only function tools are supported ('{param}.type').", param=f"{param}.type"
                )
            chat.tools.append(
                Tool(
                    name=require_str(raw, "name", f"{param}.name"),
                    description=get_str(raw, "description", f"{param}.description"),
                    parameters=get_dict(raw, "parameters", f"{param}.parameters"),
                    strict=get_bool(raw, "strict", f"{param}.strict"),
                )
            )
        inbound.need(CAP_TOOLS, "tools")
    choice = data.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str) and choice in ("none", "auto", "required"):
        chat.tool_choice = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat.tool_choice = {"name": require_str(choice, "name", "tool_choice.name")}
    else:
        raise InvalidRequest(
            "Invalid 'tool_choice': expected none, auto, required or "
            '{"type": "function", "name": ...}.',
            param="tool_choice",
            code="invalid_value",
        )
    if chat.tool_choice != "none" and not chat.tools:
        raise InvalidRequest(
            "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice"
        )


# ---------------------------------------------------------------- rendering


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


class ResponseShell:
    """The fields of a response object that echo the request."""

    def __init__(self, data: dict[str, Any], inbound: Inbound) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.instructions = (
            data.get("instructions") if isinstance(data.get("instructions"), str) else None
        )
        self.max_output_tokens = inbound.chat.max_tokens
        self.temperature = inbound.chat.temperature if inbound.chat.temperature is not None else 1.0
        self.top_p = inbound.chat.top_p if inbound.chat.top_p is not None else 1.0
        self.parallel_tool_calls = (
            inbound.chat.parallel_tool_calls
            if inbound.chat.parallel_tool_calls is not None
            else True
        )
        self.tools = [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "strict": tool.strict if tool.strict is not None else True,
            }
            for tool in inbound.chat.tools or []
        ]
        choice = inbound.chat.tool_choice
        self.tool_choice: Any = (
            {"type": "function", "name": choice["name"]}
            if isinstance(choice, dict)
            else choice or "auto"
        )
        fmt = inbound.chat.response_format
        if fmt is None:
            self.text_format: dict[str, Any] = {"type": "text"}
        elif fmt.type == "json_schema":
            self.text_format = {
                "type": "json_schema",
                "name": fmt.name,
                "schema": fmt.schema,
                "strict": bool(fmt.strict),
            }
        else:
            self.text_format = {"type": fmt.type}
        metadata = data.get("metadata")
        self.metadata = metadata if isinstance(metadata, dict) else {}
        self.user = inbound.chat.user

    def render(
        self,
        model_id: str,
        output: list[dict[str, Any]],
        *,
        status: str,
        usage: Usage | None,
        incomplete_reason: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": model_id,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": self.temperature,
            "text": {"format": self.text_format},
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": "disabled",
            "metadata": self.metadata,
        }
        if usage is not None:
            body["usage"] = _usage(usage)
        if self.user is not None:
            body["user"] = self.user
        return body


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        if status == "completed"
        else [],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def render_response(shell: ResponseShell, response: ChatResponse, model_id: str) -> dict[str, Any]:
    choice = response.choices[0] if response.choices else None
    output: list[dict[str, Any]] = []
    if choice is not None:
        text = choice.message.text()
        if text:
            output.append(_message_item(f"msg_{uuid.uuid4().hex}", text, "completed"))
        for call in choice.message.tool_calls or []:
            output.append(
                _call_item(
                    f"fc_{uuid.uuid4().hex}", call.id, call.name, call.arguments, "completed"
                )
            )
    incomplete = choice is not None and choice.finish_reason == "length"
    return shell.render(
        model_id,
        output,
        status="incomplete" if incomplete else "completed",
        usage=response.usage,
        incomplete_reason="max_output_tokens" if incomplete else None,
    )


class ResponsesStream:
    """Turns normalized chunks into Responses API stream events (``event: TYPE`` + data)."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.text_item: dict[str, Any] | None = None  # open message item
        self.text_parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # tool-call index -> open item
        self.call_args: dict[int, list[str]] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def start(self, model_id: str) -> list[bytes]:
        response = self.shell.render(model_id, [], status="in_progress", usage=None)
        return [
            self._event("response.created", {"response": response}),
            self._event("response.in_progress", {"response": response}),
        ]

    def chunk(self, chunk: ChatChunk) -> list[bytes]:
        events: list[bytes] = []
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                if self.text_item is None:
                    events += self._open_text()
                self.text_parts.append(delta.content)
                events.append(
                    self._event(
                        "response.output_text.delta",
                        {
                            "item_id": self.text_item["id"],  # type: ignore[index]
                            "output_index": self.text_item["_index"],  # type: ignore[index]
                            "content_index": 0,
                            "delta": delta.content,
                            "logprobs": [],
                        },
                    )
                )
            for call in delta.tool_calls or []:
                if call.index not in self.calls:
                    events += self._close_text()
                    item = _call_item(
                        f"fc_{uuid.uuid4().hex}",
                        call.id or f"call_{uuid.uuid4().hex[:24]}",
                        call.name or "",
                        "",
                        "in_progress",
                    )
                    index = len(self.output)
                    self.output.append(item)
                    self.calls[call.index] = {"item": item, "index": index}
                    self.call_args[call.index] = []
                    events.append(
                        self._event(
                            "response.output_item.added", {"output_index": index, "item": item}
                        )
                    )
                state = self.calls[call.index]
                if call.name and not state["item"]["name"]:
                    state["item"]["name"] = call.name
                if call.arguments:
                    self.call_args[call.index].append(call.arguments)
                    events.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            {
                                "item_id": state["item"]["id"],
                                "output_index": state["index"],
                                "delta": call.arguments,
                            },
                        )
                    )
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return events

    def _open_text(self) -> list[bytes]:
        index = len(self.output)
        item = _message_item(f"msg_{uuid.uuid4().hex}", "", "in_progress")
        self.output.append(item)
        self.text_item = {"id": item["id"], "_index": index}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", {"output_index": index, "item": item}),
            self._event(
                "response.content_part.added",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
            ),
        ]

    def _close_text(self) -> list[bytes]:
        if self.text_item is None:
            return []
        item_id, index = self.text_item["id"], self.text_item["_index"]
        text = "".join(self.text_parts)
        done_item = _message_item(item_id, text, "completed")
        self.output[index] = done_item
        self.text_item = None
        part = done_item["content"][0]
        return [
            self._event(
                "response.output_text.done",
                {
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
            ),
            self._event(
                "response.content_part.done",
                {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
            ),
            self._event("response.output_item.done", {"output_index": index, "item": done_item}),
        ]

    def finish(self, model_id: str) -> list[bytes]:
        events = self._close_text()
        for key, state in self.calls.items():
            item = state["item"]
            item["arguments"] = "".join(self.call_args[key])
            item["status"] = "completed"
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    {
                        "item_id": item["id"],
                        "name": item["name"],
                        "output_index": state["index"],
                        "arguments": item["arguments"],
                    },
                )
            )
            events.append(
                self._event(
                    "response.output_item.done", {"output_index": state["index"], "item": item}
                )
            )
        incomplete = self.finish_reason == "length"
        response = self.shell.render(
            model_id,
            self.output,
            status="incomplete" if incomplete else "completed",
            usage=self.usage or Usage(),
            incomplete_reason="max_output_tokens" if incomplete else None,
        )
        kind = "response.incomplete" if incomplete else "response.completed"
        events.append(self._event(kind, {"response": response}))
        return events

    def error(self, error: GatewayError, model_id: str) -> list[bytes]:
        failed = self.shell.render(
            model_id,
            self.output,
            status="failed",
            usage=self.usage,
            error={"code": "server_error", "message": error.message},
        )
        return [
            self._event(
                "error", {"code": error.code, "message": error.message, "param": error.param}
            ),
            self._event("response.failed", {"response": failed}),
        ]
