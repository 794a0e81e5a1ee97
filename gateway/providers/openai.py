"""OpenAI Chat Completions (and embeddings, legacy completions), which also serves every
OpenAI-compatible provider by base URL: DeepSeek, xAI, Qwen (compatible mode), Kimi, Mistral,
Groq, Together, Fireworks, OpenRouter. The base URL includes the version prefix
(``https://api.openai.com/v1``, ``https://api.deepseek.com/v1``); the adapter appends
``/chat/completions``, ``/embeddings``, ``/completions``.

Reasoning text that OpenAI-compatible providers return beside the answer (DeepSeek, Qwen and
vLLM ``reasoning_content``; OpenRouter and Groq ``reasoning``; in messages and stream deltas)
becomes an unsigned thinking part / ``Delta.thinking``. Thinking parts are never sent back
(DeepSeek refuses ``reasoning_content`` in input; OpenAI has no such field).
"""

from __future__ import annotations

import base64
import struct
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
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    Endpoint,
    ErrorKind,
    FinishReason,
    Message,
    ProviderError,
    ToolCall,
    ToolCallDelta,
    Usage,
)

_FINISH: dict[str | None, FinishReason | None] = {
    None: None,
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
}
# Reasoning models take max_completion_tokens and reject max_tokens.
_COMPLETION_TOKENS_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def message_to_wire(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    content = message.content
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for part in content:
            if part.type == "text":
                parts.append({"type": "text", "text": part.text or ""})
            elif part.reasoning:
                continue  # reasoning is not input here (see the module docstring)
            else:
                image: dict[str, Any] = {"url": part.image_url}
                if part.detail:
                    image["detail"] = part.detail
                parts.append({"type": "image_url", "image_url": image})
        out["content"] = parts
        if not parts and any(part.reasoning for part in content):
            out["content"] = None if message.tool_calls else ""
    else:
        out["content"] = content
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def request_to_wire(request: ChatRequest, *, model: str | None, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if model is not None:
        body["model"] = model
    body["messages"] = [message_to_wire(m) for m in request.messages]
    if request.max_tokens is not None:
        name = (
            "max_completion_tokens"
            if (model or "").startswith(_COMPLETION_TOKENS_PREFIXES)
            else "max_tokens"
        )
        body[name] = request.max_tokens
    for key in ("temperature", "top_p", "stop", "seed", "logprobs", "top_logprobs", "user"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.n != 1:
        body["n"] = request.n
    if request.reasoning_effort is not None:
        body["reasoning_effort"] = request.reasoning_effort
    if request.tools:
        tools = []
        for tool in request.tools:
            function: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                function["description"] = tool.description
            if tool.parameters is not None:
                function["parameters"] = tool.parameters
            if tool.strict is not None:
                function["strict"] = tool.strict
            tools.append({"type": "function", "function": function})
        body["tools"] = tools
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.tool_choice is not None:
        if isinstance(request.tool_choice, dict):
            body["tool_choice"] = {
                "type": "function",
                "function": {"name": request.tool_choice["name"]},
            }
        else:
            body["tool_choice"] = request.tool_choice
    fmt = request.response_format
    if fmt is not None:
        if fmt.type == "json_schema":
            schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {}}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            body["response_format"] = {"type": fmt.type}
    if stream:
        body["stream"] = True
        # Always ask for usage: the gateway bills from it even when the client did not ask.
        body["stream_options"] = {"include_usage": True}
    if request.extra:
        body.update(request.extra)
    return body


def usage_from_wire(data: dict[str, Any] | None) -> Usage:
    if not data:
        return Usage()
    prompt_details = data.get("prompt_tokens_details") or {}
    completion_details = data.get("completion_tokens_details") or {}
    # DeepSeek reports prompt_cache_hit_tokens instead of prompt_tokens_details.cached_tokens.
    cached = prompt_details.get("cached_tokens") or data.get("prompt_cache_hit_tokens") or 0
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        cached_tokens=int(cached),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _reasoning(data: dict[str, Any]) -> str | None:
    """The reasoning text beside a message or delta, under either compatible name."""
    value = data.get("reasoning_content") or data.get("reasoning")
    return value if isinstance(value, str) and value else None


def _with_reasoning(reasoning: str | None, content: Any) -> Any:
    """The message content, led by an unsigned thinking part when the provider reasoned."""
    if reasoning is None:
        return content
    parts = [ContentPart(type="thinking", thinking=reasoning)]
    if content:
        parts.append(ContentPart(type="text", text=content))
    return parts


def response_from_wire(data: dict[str, Any], *, fallback_model: str) -> ChatResponse:
    if "error" in data and "choices" not in data:
        raise error_from_body(0, httpx.Headers(), data)
    choices: list[Choice] = []
    for raw in data["choices"]:
        msg = raw.get("message") or {}
        calls = None
        if msg.get("tool_calls"):
            calls = [
                ToolCall(
                    id=call.get("id") or "",
                    name=call["function"]["name"],
                    arguments=call["function"].get("arguments") or "",
                )
                for call in msg["tool_calls"]
                if call.get("type", "function") == "function"
            ]
        choices.append(
            Choice(
                index=int(raw.get("index", len(choices))),
                message=Message(
                    role="assistant",
                    content=_with_reasoning(_reasoning(msg), msg.get("content")),
                    tool_calls=calls,
                    refusal=msg.get("refusal"),
                ),
                finish_reason=_FINISH.get(raw.get("finish_reason"), "stop"),
                logprobs=raw.get("logprobs"),
            )
        )
    return ChatResponse(
        id=data.get("id") or "",
        model=data.get("model") or fallback_model,
        created=int(data.get("created") or 0),
        choices=choices,
        usage=usage_from_wire(data.get("usage")),
        system_fingerprint=data.get("system_fingerprint"),
    )


def chunk_from_wire(data: dict[str, Any], fallback_model: str) -> ChatChunk:
    choices = []
    for raw in data.get("choices") or ():
        delta = raw.get("delta") or {}
        calls = None
        if delta.get("tool_calls"):
            calls = []
            for call in delta["tool_calls"]:
                function = call.get("function") or {}
                calls.append(
                    ToolCallDelta(
                        index=int(call.get("index", 0)),
                        id=call.get("id"),
                        name=function.get("name"),
                        arguments=function.get("arguments"),
                    )
                )
        choices.append(
            ChunkChoice(
                index=int(raw.get("index", 0)),
                delta=Delta(
                    role=delta.get("role"),
                    content=delta.get("content"),
                    tool_calls=calls,
                    refusal=delta.get("refusal"),
                    thinking=_reasoning(delta),
                ),
                finish_reason=_FINISH.get(raw.get("finish_reason"), "stop"),
                logprobs=raw.get("logprobs"),
            )
        )
    usage = data.get("usage")
    return ChatChunk(
        id=data.get("id") or "",
        model=data.get("model") or fallback_model,
        created=int(data.get("created") or 0),
        choices=choices,
        usage=usage_from_wire(usage) if usage else None,
    )


def error_from_body(status: int, headers: httpx.Headers, data: Any) -> ProviderError:
    """OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``, also used (with
    variations) by Azure and the compatible providers."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):  # some compatibles send {"error": "text"}
        error = {"message": error}
    if not isinstance(error, dict):
        error = data if isinstance(data, dict) else {}
    message = str(error.get("message") or error.get("detail") or "")
    code = error.get("code")
    code = str(code) if code is not None else None
    err_type = error.get("type")
    # Azure's content filter puts the reason in innererror.code.
    inner = error.get("innererror") or {}
    if isinstance(inner, dict) and inner.get("code") == "ResponsibleAIPolicyViolation":
        code = "content_filter"
    if code is None and isinstance(err_type, str) and err_type.endswith("overloaded_error"):
        code = err_type
    if status == 0 and str(error.get("code") or "").isdigit():  # mid-stream, code = status
        status = int(error["code"])
    return error_from_status(status, headers, message, code)


class OpenAIStreamDecoder(StreamDecoder):
    def __init__(self, model: str) -> None:
        self.sse = SSEDecoder()
        self.model = model
        self.done = False

    def decode(self, data: bytes, out: list[ChatChunk]) -> None:
        for _event, payload in self.sse.feed(data):
            if payload == b"[DONE]":
                self.done = True
                break
            obj = loads(payload, "stream chunk")
            if not isinstance(obj, dict):
                raise ProviderError(ErrorKind.PROTOCOL, "stream chunk is not an object")
            if "error" in obj and not obj.get("choices"):
                raise error_from_body(0, httpx.Headers(), obj)
            out.append(chunk_from_wire(obj, self.model))

    def finish(self) -> list[ChatChunk]:
        if not self.done:
            raise ProviderError(ErrorKind.PROTOCOL, "stream ended without [DONE]")
        return []


class OpenAIAdapter(Adapter):
    kind = "openai"
    supports_embeddings = True

    def auth_headers(self, endpoint: Endpoint) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        return headers

    def chat_url(self, endpoint: Endpoint) -> str:
        return join_url(endpoint.base_url, "/chat/completions")

    def wire_model(self, endpoint: Endpoint) -> str | None:
        return endpoint.model

    def build(
        self, endpoint: Endpoint, request: ChatRequest, *, stream: bool
    ) -> tuple[str, dict[str, str], bytes]:
        body = request_to_wire(request, model=self.wire_model(endpoint), stream=stream)
        headers = self.auth_headers(endpoint)
        if stream:
            headers["accept"] = "text/event-stream"
        return self.chat_url(endpoint), headers, orjson.dumps(body)

    def parse(self, endpoint: Endpoint, request: ChatRequest, data: Any) -> ChatResponse:
        return response_from_wire(data, fallback_model=endpoint.model)

    def decoder(self, endpoint: Endpoint, request: ChatRequest) -> StreamDecoder:
        return OpenAIStreamDecoder(endpoint.model)

    def parse_error(self, status: int, headers: httpx.Headers, body: bytes) -> ProviderError:
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            data = {"error": {"message": body[:200].decode("utf-8", "replace")}}
        return error_from_body(status, headers, data)

    # ------------------------------------------------------------ embeddings

    def embeddings_url(self, endpoint: Endpoint) -> str:
        return join_url(endpoint.base_url, "/embeddings")

    def build_embedding(
        self, endpoint: Endpoint, request: EmbeddingRequest
    ) -> tuple[str, dict[str, str], bytes]:
        body: dict[str, Any] = {"input": request.input, "encoding_format": request.encoding_format}
        model = self.wire_model(endpoint)
        if model is not None:
            body["model"] = model
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user is not None:
            body["user"] = request.user
        return self.embeddings_url(endpoint), self.auth_headers(endpoint), orjson.dumps(body)

    def parse_embedding(
        self, endpoint: Endpoint, request: EmbeddingRequest, data: Any
    ) -> EmbeddingResponse:
        items = []
        for item in data["data"]:
            vector = item["embedding"]
            if isinstance(vector, str):  # encoding_format=base64: little-endian float32
                raw = base64.b64decode(vector)
                vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
            items.append(Embedding(index=int(item["index"]), vector=vector))
        usage = data.get("usage") or {}
        return EmbeddingResponse(
            model=data.get("model") or endpoint.model,
            data=items,
            usage=Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0)),
        )

    # ------------------------------------------------------------ legacy completions

    async def complete_text(
        self, endpoint: Endpoint, *, prompt: str, max_tokens: int | None = None, **extra: Any
    ) -> tuple[str, FinishReason | None, Usage]:
        """Legacy ``/completions``: returns (text, finish_reason, usage)."""
        body: dict[str, Any] = {"prompt": prompt, **extra}
        model = self.wire_model(endpoint)
        if model is not None:
            body["model"] = model
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        url = join_url(endpoint.base_url, "/completions")
        data = await self._call_json(
            endpoint, url, self.auth_headers(endpoint), orjson.dumps(body), None
        )
        try:
            choice = data["choices"][0]
            return (
                choice.get("text") or "",
                _FINISH.get(choice.get("finish_reason"), "stop"),
                usage_from_wire(data.get("usage")),
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderError(
                ErrorKind.PROTOCOL, f"unexpected completions shape: {exc!r}"
            ) from None
