"""AWS Bedrock Converse / ConverseStream (``POST {base}/model/{modelId}/converse`` and
``/converse-stream``), signed with SigV4 (service ``bedrock``, the endpoint's region).

The base URL is ``https://bedrock-runtime.{region}.amazonaws.com`` in production. Credentials:
``Endpoint.aws_access_key_id`` / ``aws_secret_access_key`` (+ ``aws_session_token``); an
``Endpoint.api_key`` alone is sent as a Bedrock API key (``Authorization: Bearer``).
ConverseStream answers in the binary event stream framing (gateway.providers.eventstream),
decoded with CRC checks; its terminator is the ``metadata`` event (after ``messageStop``).
Usage: ``prompt_tokens`` = inputTokens + cacheReadInputTokens + cacheWriteInputTokens (Bedrock
reports the cache tokens apart from inputTokens).
Extended thinking (Claude on Bedrock): ``ChatRequest.thinking`` enabled goes as
``additionalModelRequestFields.thinking``; signed thinking parts go back as
``reasoningContent.reasoningText {text, signature}``, redacted ones as
``reasoningContent.redactedContent``, in their place in the assistant turn. Answers'
``reasoningContent`` blocks and stream deltas (``text``, ``signature``, ``redactedContent``)
become thinking parts and reasoning deltas. Reasoning tokens are inside ``outputTokens``.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from gateway.providers import sigv4
from gateway.providers.base import (
    Adapter,
    StreamDecoder,
    error_from_status,
    join_url,
    loads,
)
from gateway.providers.eventstream import EventStreamDecoder, EventStreamError
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

SERVICE = "bedrock"
DEFAULT_REGION = "us-east-1"

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# x-amzn-ErrorType / :exception-type -> kind (status decides the rest).
_EXCEPTIONS = {
    "throttlingexception": ErrorKind.RATE_LIMITED,
    "servicequotaexceededexception": ErrorKind.RATE_LIMITED,
    "modelnotreadyexception": ErrorKind.OVERLOADED,
    "serviceunavailableexception": ErrorKind.OVERLOADED,
    "internalserverexception": ErrorKind.SERVER_ERROR,
    "modelstreamerrorexception": ErrorKind.SERVER_ERROR,
    "modelerrorexception": ErrorKind.SERVER_ERROR,
    "modeltimeoutexception": ErrorKind.TIMEOUT,
    "accessdeniedexception": ErrorKind.AUTHENTICATION,
    "unrecognizedclientexception": ErrorKind.AUTHENTICATION,
    "missingauthenticationtokenexception": ErrorKind.AUTHENTICATION,
    "invalidsignatureexception": ErrorKind.AUTHENTICATION,
    "expiredtokenexception": ErrorKind.AUTHENTICATION,
    "resourcenotfoundexception": ErrorKind.BAD_REQUEST,
}
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}


# Converse's prompt-cache breakpoint: a block of its own after the content it closes (the
# caller's Anthropic cache_control, mapped; Bedrock's cache lifetime is its default).
CACHE_POINT = {"cachePoint": {"type": "default"}}


def _content(message: Message) -> list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str):
        if not content:
            return []
        return [{"text": content}, *([CACHE_POINT] if message.cache_control else [])]
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        if part.type == "text":
            blocks.append({"text": part.text or ""})
        elif part.reasoning:
            if message.role == "assistant" and (part.signature or part.data is not None):
                blocks.append({"reasoningContent": _reasoning_wire(part)})
            continue  # unsigned reasoning (another provider's) is not input
        else:
            url = part.image_url or ""
            if not url.startswith("data:"):
                raise ProviderError(
                    ErrorKind.BAD_REQUEST, "Bedrock takes images as data: URIs only"
                )
            header, _, data = url.partition(",")
            mime = header[5:].split(";", 1)[0]
            blocks.append(
                {"image": {"format": _IMAGE_FORMATS.get(mime, "png"), "source": {"bytes": data}}}
            )
        if part.cache_control:
            blocks.append(CACHE_POINT)
    return blocks


def _reasoning_wire(part: ContentPart) -> dict[str, Any]:
    if part.type == "redacted_thinking":
        return {"redactedContent": part.data or ""}
    return {"reasoningText": {"text": part.thinking or "", "signature": part.signature or ""}}


def _reasoning_part(block: dict[str, Any]) -> ContentPart:
    if "redactedContent" in block:
        return ContentPart(type="redacted_thinking", data=str(block["redactedContent"]))
    text = block.get("reasoningText") or {}
    return ContentPart(
        type="thinking", thinking=text.get("text") or "", signature=text.get("signature")
    )


def _json_or_text(text: str) -> list[dict[str, Any]]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return [{"text": text}]
    return [{"json": value}] if isinstance(value, dict) else [{"text": text}]


def _add(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Append blocks to the conversation, merged into the last message if it has the role."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _assistant_blocks(message: Message) -> list[dict[str, Any]]:
    """An assistant turn's content blocks, its tool calls as ``toolUse`` blocks."""
    blocks = _content(message)
    for call in message.tool_calls or ():
        try:
            arguments = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            raise ProviderError(
                ErrorKind.BAD_REQUEST, "tool call arguments are not valid JSON"
            ) from None
        blocks.append({"toolUse": {"toolUseId": call.id, "name": call.name, "input": arguments}})
        if call.cache_control:
            blocks.append(CACHE_POINT)
    return blocks


def _inference_config(request: ChatRequest) -> dict[str, Any]:
    """``inferenceConfig``: the sampling settings the request sets (empty if none)."""
    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = request.stop
    return config


def _tool_config(request: ChatRequest) -> dict[str, Any] | None:
    """``toolConfig``, or None when the request sends no tools.

    Converse has no "none" choice: tools are left out, unless the history holds toolUse /
    toolResult blocks, which Bedrock accepts only with a toolConfig."""
    if not request.tools:
        return None
    if request.tool_choice == "none" and not any(
        m.tool_calls or m.role == "tool" for m in request.messages
    ):
        return None
    tools: list[dict[str, Any]] = []
    for tool in request.tools:
        spec = {
            "name": tool.name,
            **({"description": tool.description} if tool.description else {}),
            "inputSchema": {"json": tool.parameters or {"type": "object", "properties": {}}},
        }
        tools.append({"toolSpec": spec})
        if tool.cache_control:
            tools.append(CACHE_POINT)
    tool_config: dict[str, Any] = {"tools": tools}
    if isinstance(request.tool_choice, dict):
        tool_config["toolChoice"] = {"tool": {"name": request.tool_choice["name"]}}
    elif request.tool_choice == "required":
        tool_config["toolChoice"] = {"any": {}}
    elif request.tool_choice == "auto":
        tool_config["toolChoice"] = {"auto": {}}
    return tool_config


def request_to_wire(request: ChatRequest) -> dict[str, Any]:
    """The Converse / ConverseStream request body."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role in ("system", "developer"):
            system += _content(message)  # its text blocks, a cache point after each marked one
            if message.cache_control and isinstance(message.content, list):
                system.append(CACHE_POINT)
        elif message.role == "tool":
            result = {
                "toolUseId": message.tool_call_id or "",
                "content": _json_or_text(message.text()),
            }
            _add(messages, "user", [{"toolResult": result}])
            if message.cache_control:
                _add(messages, "user", [CACHE_POINT])
        elif message.role == "assistant":
            _add(messages, "assistant", _assistant_blocks(message))
        else:
            _add(messages, "user", _content(message))
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    config = _inference_config(request)
    if config:
        body["inferenceConfig"] = config
    tool_config = _tool_config(request)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    # Claude's own fields on Bedrock; ``extra`` (OpenAI-format fields) is not sent: Converse
    # refuses unknown fields
    model_fields: dict[str, Any] = {}
    thinking = request.thinking
    if thinking is not None and thinking.type == "enabled":
        model_fields["thinking"] = {"type": "enabled", "budget_tokens": thinking.budget_tokens}
    if request.top_k is not None:
        model_fields["top_k"] = request.top_k
    if model_fields:
        body["additionalModelRequestFields"] = model_fields
    return body


def usage_from_wire(data: dict[str, Any] | None) -> Usage:
    data = data or {}
    read = int(data.get("cacheReadInputTokens") or 0)
    write = int(data.get("cacheWriteInputTokens") or 0)
    return Usage(
        prompt_tokens=int(data.get("inputTokens") or 0) + read + write,
        completion_tokens=int(data.get("outputTokens") or 0),
        cached_tokens=read,
        cache_write_tokens=write,
    )


def _response_id(data: dict[str, Any]) -> str:
    digest = hashlib.sha1(orjson.dumps(data.get("usage") or {}), usedforsecurity=False)
    return "bedrock-" + digest.hexdigest()[:20]


def response_from_wire(data: dict[str, Any], model: str) -> ChatResponse:
    message = data["output"]["message"]
    texts: list[str] = []
    calls: list[ToolCall] = []
    parts: list[ContentPart] | None = None  # only when the answer holds reasoning
    for block in message.get("content") or ():
        if "text" in block:
            texts.append(block["text"])
            if parts is not None:
                parts.append(ContentPart(type="text", text=block["text"]))
        elif "reasoningContent" in block:
            if parts is None:
                parts = [ContentPart(type="text", text=text) for text in texts]
            parts.append(_reasoning_part(block["reasoningContent"]))
        elif "toolUse" in block:
            use = block["toolUse"]
            calls.append(
                ToolCall(
                    id=use["toolUseId"],
                    name=use["name"],
                    arguments=orjson.dumps(use.get("input") or {}).decode(),
                )
            )
    finish = _STOP.get(data.get("stopReason") or "", "stop")
    return ChatResponse(
        id=_response_id(data),
        model=model,
        created=0,
        choices=[
            Choice(
                index=0,
                message=Message(
                    role="assistant",
                    content=parts if parts is not None else "".join(texts) if texts else None,
                    tool_calls=calls or None,
                ),
                finish_reason=finish,
            )
        ],
        usage=usage_from_wire(data.get("usage")),
    )


def error_from_parts(
    status: int, headers: httpx.Headers | dict[str, str], error_type: str, message: str
) -> ProviderError:
    name = error_type.split(":", 1)[0].strip()
    kind = _EXCEPTIONS.get(name.lower())
    if name.lower() == "validationexception":
        kind = None  # the status and message decide: context length or bad request
    if kind is None and status == 0:
        kind = ErrorKind.SERVER_ERROR
    return error_from_status(status or 400, headers, message or name, name or None, kind=kind)


class BedrockStreamDecoder(StreamDecoder):
    def __init__(self, model: str) -> None:
        self.events = EventStreamDecoder()
        self.model = model
        self.done = False
        self.stopped: FinishReason | None = None
        self.tool_index: dict[int, int] = {}
        self.id = "bedrock-stream"

    def _chunk(self, delta: Delta, finish: FinishReason | None = None) -> ChatChunk:
        return ChatChunk(
            id=self.id,
            model=self.model,
            created=0,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],
        )

    def decode(self, data: bytes, out: list[ChatChunk]) -> None:
        try:
            messages = self.events.feed(data)
        except EventStreamError as exc:
            raise ProviderError(ErrorKind.PROTOCOL, f"bad event stream frame: {exc}") from None
        for headers, payload in messages:
            message_type = headers.get(":message-type", "event")
            if message_type in ("exception", "error"):
                error_type = headers.get(":exception-type") or headers.get(":error-code", "")
                body = loads(payload, "stream exception") if payload else {}
                message = (
                    body.get("message") or body.get("Message") or ""
                    if isinstance(body, dict)
                    else ""
                )
                raise error_from_parts(0, {}, error_type, str(message))
            event = headers.get(":event-type", "")
            obj = loads(payload, "stream event") if payload else {}
            if event == "messageStart":
                out.append(self._chunk(Delta(role="assistant", content="")))
            elif event == "contentBlockStart":
                start = (obj.get("start") or {}).get("toolUse")
                if start:
                    index = len(self.tool_index)
                    self.tool_index[int(obj.get("contentBlockIndex", 0))] = index
                    out.append(
                        self._chunk(
                            Delta(
                                tool_calls=[
                                    ToolCallDelta(
                                        index=index,
                                        id=start["toolUseId"],
                                        name=start["name"],
                                        arguments="",
                                    )
                                ]
                            )
                        )
                    )
            elif event == "contentBlockDelta":
                delta = obj.get("delta") or {}
                if "text" in delta:
                    out.append(self._chunk(Delta(content=delta["text"])))
                elif "reasoningContent" in delta:
                    reasoning = delta["reasoningContent"]
                    out.append(
                        self._chunk(
                            Delta(
                                thinking=reasoning.get("text"),
                                signature=reasoning.get("signature"),
                                redacted_thinking=reasoning.get("redactedContent"),
                            )
                        )
                    )
                elif "toolUse" in delta:
                    index = self.tool_index[int(obj.get("contentBlockIndex", 0))]
                    out.append(
                        self._chunk(
                            Delta(
                                tool_calls=[
                                    ToolCallDelta(index=index, arguments=delta["toolUse"]["input"])
                                ]
                            )
                        )
                    )
            elif event == "messageStop":
                self.stopped = _STOP.get(obj.get("stopReason") or "", "stop")
                out.append(self._chunk(Delta(), self.stopped))
            elif event == "metadata":
                if self.stopped is None:
                    raise ProviderError(ErrorKind.PROTOCOL, "metadata before messageStop")
                self.done = True
                out.append(
                    ChatChunk(
                        id=self.id,
                        model=self.model,
                        created=0,
                        choices=[],
                        usage=usage_from_wire(obj.get("usage")),
                    )
                )
                break
        if self.events.error is not None:
            raise ProviderError(ErrorKind.PROTOCOL, f"bad event stream frame: {self.events.error}")

    def finish(self) -> list[ChatChunk]:
        if not self.done:
            raise ProviderError(ErrorKind.PROTOCOL, "event stream ended without metadata")
        return []


class BedrockAdapter(Adapter):
    kind = "bedrock"

    def build(
        self, endpoint: Endpoint, request: ChatRequest, *, stream: bool
    ) -> tuple[str, dict[str, str], bytes]:
        model = quote(endpoint.model, safe="")
        operation = "converse-stream" if stream else "converse"
        headers = {"content-type": "application/json"}
        headers["accept"] = "application/vnd.amazon.eventstream" if stream else "application/json"
        body = orjson.dumps(request_to_wire(request))
        return join_url(endpoint.base_url, f"/model/{model}/{operation}"), headers, body

    def sign(
        self, endpoint: Endpoint, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> dict[str, str]:
        if endpoint.headers:
            headers.update(endpoint.headers)
        if endpoint.aws_access_key_id and endpoint.aws_secret_access_key:
            return sigv4.sign(
                method=method,
                url=url,
                headers=headers,
                body=body,
                access_key=endpoint.aws_access_key_id,
                secret_key=endpoint.aws_secret_access_key,
                session_token=endpoint.aws_session_token,
                region=endpoint.region or DEFAULT_REGION,
                service=SERVICE,
            )
        if endpoint.api_key:  # Bedrock API keys are bearer tokens
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        return headers

    def parse(self, endpoint: Endpoint, request: ChatRequest, data: Any) -> ChatResponse:
        return response_from_wire(data, endpoint.model)

    def decoder(self, endpoint: Endpoint, request: ChatRequest) -> StreamDecoder:
        return BedrockStreamDecoder(endpoint.model)

    def parse_error(self, status: int, headers: httpx.Headers, body: bytes) -> ProviderError:
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            data = {"message": body[:200].decode("utf-8", "replace")}
        if not isinstance(data, dict):
            data = {}
        error_type = headers.get("x-amzn-errortype") or str(data.get("__type") or "")
        error_type = error_type.rsplit("#", 1)[-1]
        message = str(data.get("message") or data.get("Message") or "")
        return error_from_parts(status, headers, error_type, message)
