"""Anthropic Messages (``POST {base}/v1/messages``), headers ``x-api-key`` and
``anthropic-version: 2023-06-01``.

Translation: system / developer messages become the top-level ``system``; tool calls become
``tool_use`` blocks and tool results ``tool_result`` blocks in a user turn (consecutive turns
of one role are merged, as the API requires alternation); images become ``image`` blocks
(base64 for ``data:`` URIs, ``url`` sources otherwise). ``max_tokens`` is required by Anthropic:
the gateway always sends one (the caller's, else the output admission held, see
``gateway.pipeline._output_limit``); the adapter used on its own (probes, tests) sends
:data:`DEFAULT_MAX_TOKENS` when the request has none.
Usage: ``prompt_tokens`` = input + cache read + cache creation tokens (Anthropic's
``input_tokens`` excludes both), ``cached_tokens`` = cache read, ``cache_write_tokens`` = cache
creation. ``stop_reason`` ``refusal`` maps to finish reason ``content_filter``.
Extended thinking: ``ChatRequest.thinking`` goes as ``thinking``; an assistant turn's
``thinking`` (with its signature) and ``redacted_thinking`` parts go back as they came, in
their place before the turn's text and ``tool_use`` blocks (unsigned reasoning, from an
OpenAI-compatible provider, is left out: Anthropic would refuse it). Answers' thinking blocks
become thinking parts; streamed ``thinking_delta`` / ``signature_delta`` become
``Delta.thinking`` / ``Delta.signature``, a redacted block ``Delta.redacted_thinking``.
Anthropic counts thinking in ``output_tokens`` (no separate count), so it is billed at the
output price.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from gateway.providers.base import (
    Adapter,
    SSEDecoder,
    StreamDecoder,
    error_from_status,
    join_url,
    loads,
)
from gateway.providers.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    ContentPart,
    Delta,
    Endpoint,
    ErrorKind,
    FinishReason,
    Message,
    ProviderError,
    ToolCall,
    ToolCallDelta,
    Usage,
)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # used only when the adapter is called without a limit

_STOP: dict[str | None, FinishReason | None] = {
    None: None,
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic error types -> kinds, when the status alone is not enough.
_ERROR_TYPES = {
    "overloaded_error": ErrorKind.OVERLOADED,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "authentication_error": ErrorKind.AUTHENTICATION,
    "permission_error": ErrorKind.AUTHENTICATION,
    "api_error": ErrorKind.SERVER_ERROR,
    "timeout_error": ErrorKind.TIMEOUT,
}


def _image_block(url: str | None) -> dict[str, Any]:
    url = url or ""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _marked(block: dict[str, Any], cache_control: dict[str, str] | None) -> dict[str, Any]:
    """The block with the caller's prompt-cache breakpoint, when it set one."""
    if cache_control:
        block["cache_control"] = dict(cache_control)
    return block


def _blocks(message: Message) -> list[dict[str, Any]]:
    content = message.content
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append(_marked({"type": "text", "text": content}, message.cache_control))
    elif content:
        for part in content:
            if part.type == "text":
                block = {"type": "text", "text": part.text or ""}
            elif part.type == "image":
                block = _image_block(part.image_url)
            elif part.type == "redacted_thinking" and message.role == "assistant":
                blocks.append({"type": "redacted_thinking", "data": part.data or ""})
                continue
            elif part.type == "thinking" and message.role == "assistant" and part.signature:
                blocks.append(
                    {
                        "type": "thinking",
                        "thinking": part.thinking or "",
                        "signature": part.signature,
                    }
                )
                continue
            else:
                continue  # unsigned reasoning (another provider's): Anthropic refuses it
            blocks.append(_marked(block, part.cache_control))
    return blocks


def _tool_input(arguments: str) -> Any:
    if not arguments:
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise ProviderError(
            ErrorKind.BAD_REQUEST, "tool call arguments are not valid JSON"
        ) from None


def request_to_wire(request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
    system: list[str] = []
    system_blocks: list[dict[str, Any]] = []  # each with its breakpoint, as the client sent
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in request.messages:
        if message.role in ("system", "developer"):
            system.append(message.text())
            system_blocks += _system_blocks(message)
        elif message.role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.text(),
            }
            add("user", [_marked(result, message.cache_control)])
        elif message.role == "assistant":
            blocks = _blocks(message)
            for call in message.tool_calls or ():
                use = {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": _tool_input(call.arguments),
                }
                blocks.append(_marked(use, call.cache_control))
            add("assistant", blocks)
        else:
            add("user", _blocks(message))

    max_tokens = request.max_tokens
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if any("cache_control" in block for block in system_blocks):
        body["system"] = system_blocks  # breakpoints: the blocks, each where the client put it
    elif system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.thinking is not None:
        body["thinking"] = _thinking_wire(request)
    if request.tools:  # also with tool_choice "none": history may hold tool_use blocks
        body["tools"] = [
            {
                "name": tool.name,
                **({"description": tool.description} if tool.description else {}),
                "input_schema": tool.parameters or {"type": "object", "properties": {}},
                **({"cache_control": dict(tool.cache_control)} if tool.cache_control else {}),
            }
            for tool in request.tools
        ]
    choice: dict[str, Any] | None = None
    if isinstance(request.tool_choice, dict):
        choice = {"type": "tool", "name": request.tool_choice["name"]}
    elif request.tool_choice == "required":
        choice = {"type": "any"}
    elif request.tool_choice == "auto":
        choice = {"type": "auto"}
    elif request.tool_choice == "none":
        choice = {"type": "none"}
    if request.tools and request.parallel_tool_calls is False and request.tool_choice != "none":
        choice = (choice or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    if choice is not None and request.tools:
        body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    if request.top_k is not None:
        body["top_k"] = request.top_k
    # ``extra`` holds OpenAI-format fields (presence_penalty, metadata, ...): the Messages API
    # refuses unknown fields, so none is sent
    return body


def _thinking_wire(request: ChatRequest) -> dict[str, Any]:
    thinking = request.thinking
    assert thinking is not None
    if thinking.type == "enabled":
        return {"type": "enabled", "budget_tokens": thinking.budget_tokens}
    return {"type": "disabled"}


def _system_blocks(message: Message) -> list[dict[str, Any]]:
    """A system message as text blocks: its parts with their own breakpoints (the message's
    own breakpoint, if any, on the last)."""
    if isinstance(message.content, list):
        blocks = [
            _marked({"type": "text", "text": p.text}, p.cache_control)
            for p in message.content
            if p.type == "text" and p.text
        ]
    else:
        blocks = [{"type": "text", "text": message.text()}] if message.text() else []
    if blocks and message.cache_control:
        blocks[-1] = _marked(blocks[-1], message.cache_control)
    return blocks


def usage_from_wire(data: dict[str, Any] | None) -> Usage:
    data = data or {}
    cache_read = int(data.get("cache_read_input_tokens") or 0)
    cache_write = int(data.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(data.get("input_tokens") or 0) + cache_read + cache_write,
        completion_tokens=int(data.get("output_tokens") or 0),
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def response_from_wire(data: dict[str, Any], fallback_model: str) -> ChatResponse:
    if data.get("type") == "error":
        raise error_from_body(0, httpx.Headers(), data)
    texts: list[str] = []
    calls: list[ToolCall] = []
    parts: list[ContentPart] | None = None  # only when the answer holds reasoning
    for block in data["content"]:
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
            if parts is not None:
                parts.append(ContentPart(type="text", text=block["text"]))
        elif kind in ("thinking", "redacted_thinking"):
            if parts is None:
                parts = [ContentPart(type="text", text=text) for text in texts]
            if kind == "thinking":
                part = ContentPart(
                    type="thinking",
                    thinking=block.get("thinking") or "",
                    signature=block.get("signature") or "",
                )
            else:
                part = ContentPart(type="redacted_thinking", data=block.get("data") or "")
            parts.append(part)
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=block["id"],
                    name=block["name"],
                    arguments=orjson.dumps(block.get("input") or {}).decode(),
                )
            )
    finish = _STOP.get(data.get("stop_reason"), "stop")
    text = "".join(texts) if texts else None
    return ChatResponse(
        id=data.get("id") or "",
        model=data.get("model") or fallback_model,
        created=0,
        choices=[
            Choice(
                index=0,
                message=Message(
                    role="assistant",
                    content=parts if parts is not None else text,
                    tool_calls=calls or None,
                    refusal=text if finish == "content_filter" else None,
                ),
                finish_reason=finish,
            )
        ],
        usage=usage_from_wire(data.get("usage")),
    )


def error_from_body(status: int, headers: httpx.Headers, data: Any) -> ProviderError:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        error = {}
    err_type = str(error.get("type") or "")
    message = str(error.get("message") or "")
    kind = _ERROR_TYPES.get(err_type)
    if kind is None and status == 0:  # an error event mid-stream
        kind = ErrorKind.SERVER_ERROR
    return error_from_status(status, headers, message or err_type, err_type or None, kind=kind)


class AnthropicStreamDecoder(StreamDecoder):
    """message_start -> role chunk; text_delta -> content; thinking_delta / signature_delta ->
    reasoning deltas (a redacted_thinking start -> its data); tool_use start /
    input_json_delta -> tool call deltas; message_delta -> finish reason; message_stop -> the
    usage chunk."""

    def __init__(self, model: str) -> None:
        self.sse = SSEDecoder()
        self.model = model
        self.done = False
        self.id = ""
        self.usage = Usage()
        self.input: dict[str, Any] = {}
        self.output_tokens = 0
        self.tool_index: dict[int, int] = {}  # content block index -> tool call index
        self.finish_reason: FinishReason | None = None

    def _chunk(self, delta: Delta | None, finish: FinishReason | None = None) -> ChatChunk:
        choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
        return ChatChunk(id=self.id, model=self.model, created=0, choices=choices)

    def decode(self, data: bytes, out: list[ChatChunk]) -> None:
        for event, payload in self.sse.feed(data):
            obj = loads(payload, "stream event")
            kind = obj.get("type") or event
            if kind == "message_start":
                message = obj["message"]
                self.id = message.get("id") or ""
                self.model = message.get("model") or self.model
                self.input = message.get("usage") or {}
                self.output_tokens = int(self.input.get("output_tokens") or 0)
                out.append(self._chunk(Delta(role="assistant", content="")))
            elif kind == "content_block_start":
                block = obj["content_block"]
                if block.get("type") == "tool_use":
                    index = len(self.tool_index)
                    self.tool_index[int(obj["index"])] = index
                    out.append(
                        self._chunk(
                            Delta(
                                tool_calls=[
                                    ToolCallDelta(
                                        index=index,
                                        id=block["id"],
                                        name=block["name"],
                                        arguments="",
                                    )
                                ]
                            )
                        )
                    )
                elif block.get("type") == "text" and block.get("text"):
                    out.append(self._chunk(Delta(content=block["text"])))
                elif block.get("type") == "redacted_thinking":
                    out.append(self._chunk(Delta(redacted_thinking=block.get("data") or "")))
                elif block.get("type") == "thinking" and block.get("thinking"):
                    out.append(self._chunk(Delta(thinking=block["thinking"])))
            elif kind == "content_block_delta":
                delta = obj["delta"]
                dtype = delta.get("type")
                if dtype == "text_delta":
                    out.append(self._chunk(Delta(content=delta["text"])))
                elif dtype == "thinking_delta":
                    out.append(self._chunk(Delta(thinking=delta["thinking"])))
                elif dtype == "signature_delta":
                    out.append(self._chunk(Delta(signature=delta["signature"])))
                elif dtype == "input_json_delta":
                    index = self.tool_index[int(obj["index"])]
                    out.append(
                        self._chunk(
                            Delta(
                                tool_calls=[
                                    ToolCallDelta(index=index, arguments=delta["partial_json"])
                                ]
                            )
                        )
                    )
            elif kind == "message_delta":
                usage = obj.get("usage") or {}
                if "output_tokens" in usage:
                    self.output_tokens = int(usage["output_tokens"])
                for key in (
                    "input_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                ):
                    if usage.get(key) is not None:
                        self.input[key] = usage[key]
                stop = (obj.get("delta") or {}).get("stop_reason")
                self.finish_reason = _STOP.get(stop, "stop")
                out.append(self._chunk(Delta(), self.finish_reason))
            elif kind == "message_stop":
                self.done = True
                final = self._chunk(None)
                final.usage = usage_from_wire(self.input | {"output_tokens": self.output_tokens})
                out.append(final)
                break
            elif kind == "error":
                raise error_from_body(0, httpx.Headers(), obj)
            # ping, content_block_stop: nothing to relay

    def finish(self) -> list[ChatChunk]:
        if not self.done:
            raise ProviderError(ErrorKind.PROTOCOL, "stream ended without message_stop")
        return []


# What Anthropic's count_tokens takes of a message request (it refuses anything else).
COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


class AnthropicAdapter(Adapter):
    kind = "anthropic"
    supports_count_tokens = True

    def _headers(self, endpoint: Endpoint) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if endpoint.api_key:
            headers["x-api-key"] = endpoint.api_key
        return headers

    def build(
        self, endpoint: Endpoint, request: ChatRequest, *, stream: bool
    ) -> tuple[str, dict[str, str], bytes]:
        headers = self._headers(endpoint)
        if stream:
            headers["accept"] = "text/event-stream"
        body = request_to_wire(request, endpoint.model, stream=stream)
        return join_url(endpoint.base_url, "/v1/messages"), headers, orjson.dumps(body)

    def build_count_tokens(
        self, endpoint: Endpoint, request: ChatRequest
    ) -> tuple[str, dict[str, str], bytes]:
        """``POST /v1/messages/count_tokens``: the message body's prompt fields only."""
        wire = request_to_wire(request, endpoint.model, stream=False)
        body = {k: wire[k] for k in COUNT_FIELDS if k in wire}
        url = join_url(endpoint.base_url, "/v1/messages/count_tokens")
        return url, self._headers(endpoint), orjson.dumps(body)

    def parse(self, endpoint: Endpoint, request: ChatRequest, data: Any) -> ChatResponse:
        return response_from_wire(data, endpoint.model)

    def decoder(self, endpoint: Endpoint, request: ChatRequest) -> StreamDecoder:
        return AnthropicStreamDecoder(endpoint.model)

    def parse_error(self, status: int, headers: httpx.Headers, body: bytes) -> ProviderError:
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            data = {"error": {"message": body[:200].decode("utf-8", "replace")}}
        return error_from_body(status, headers, data)
