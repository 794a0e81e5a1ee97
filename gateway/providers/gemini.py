"""Google Gemini ``generateContent`` / ``streamGenerateContent?alt=sse`` (Generative Language
API, ``POST {base}/v1beta/models/{model}:generateContent``), header ``x-goog-api-key``.

Translation: system / developer messages -> ``systemInstruction``; assistant -> role ``model``;
tool calls -> ``functionCall`` parts, tool results -> ``functionResponse`` parts (the function
name is looked up from the call id earlier in the conversation); tools ->
``functionDeclarations``; JSON output -> ``generationConfig.responseMimeType`` /
``responseSchema``. A prompt blocked by safety (``promptFeedback.blockReason``) raises
CONTENT_FILTER; a candidate stopped by safety (``finishReason`` SAFETY, RECITATION, ...) ends
with finish reason ``content_filter``. Usage: ``promptTokenCount`` (cached included),
``candidatesTokenCount + thoughtsTokenCount`` as completion, ``cachedContentTokenCount``,
``thoughtsTokenCount`` as reasoning. Gemini has no stream terminator: a stream must end with a
chunk that carries ``finishReason``, otherwise PROTOCOL.

Embeddings: ``POST {base}/v1beta/models/{model}:batchEmbedContents`` with one
``{"model": "models/{model}", "content": {"parts": [{"text": ...}]}, "outputDimensionality": N}``
request per input, at most 100 to a call (Google's limit: a longer input list is sent as
several calls at once and joined in order); the answer is ``{"embeddings": [{"values": [...]}]}``.
Gemini takes text only (token arrays are UNSUPPORTED: another model may take them) and reports
no token count, so the usage is left at 0 for the gateway's estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from gateway.http import Timeouts
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
    Delta,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    Endpoint,
    ErrorKind,
    FinishReason,
    Message,
    ProviderError,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
    "LANGUAGE": "stop",
    "OTHER": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
}
# JSON Schema keywords Gemini's OpenAPI-subset schema rejects.
_UNSUPPORTED_SCHEMA_KEYS = {"additionalProperties", "$schema", "$id", "strict", "examples"}
_STATUS_KINDS = {
    "RESOURCE_EXHAUSTED": ErrorKind.RATE_LIMITED,
    "UNAVAILABLE": ErrorKind.OVERLOADED,
    "DEADLINE_EXCEEDED": ErrorKind.TIMEOUT,
    "UNAUTHENTICATED": ErrorKind.AUTHENTICATION,
    "PERMISSION_DENIED": ErrorKind.AUTHENTICATION,
    "INTERNAL": ErrorKind.SERVER_ERROR,
}


def clean_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            key: clean_schema(value)
            for key, value in schema.items()
            if key not in _UNSUPPORTED_SCHEMA_KEYS
        }
    if isinstance(schema, list):
        return [clean_schema(value) for value in schema]
    return schema


def _parts(message: Message) -> list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content or ():
        if part.type == "text":
            parts.append({"text": part.text or ""})
        elif part.reasoning:
            continue  # another provider's reasoning: Gemini keeps its own thoughts
        else:
            url = part.image_url or ""
            if url.startswith("data:"):
                header, _, data = url.partition(",")
                mime = header[5:].split(";", 1)[0] or "image/png"
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            else:
                parts.append({"fileData": {"mimeType": "image/*", "fileUri": url}})
    return parts


def _json_or_text(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}
    return value if isinstance(value, dict) else {"content": value}


def _add(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Append parts to the conversation, merged into the last content if it has the role."""
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _model_parts(message: Message, call_names: dict[str, str]) -> list[dict[str, Any]]:
    """An assistant turn's parts, its tool calls as ``functionCall`` parts (their names
    recorded by call id for the results that follow)."""
    parts = _parts(message)
    for call in message.tool_calls or ():
        call_names[call.id] = call.name
        parts.append({"functionCall": {"name": call.name, "args": _json_or_text(call.arguments)}})
    return parts


def _generation_config(request: ChatRequest) -> dict[str, Any]:
    """``generationConfig``: the sampling and output settings the request sets (empty if none)."""
    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = request.stop
    if request.seed is not None:
        config["seed"] = request.seed
    if request.n != 1:
        config["candidateCount"] = request.n
    if request.top_k is not None:
        config["topK"] = request.top_k
    # the OpenAI-format fields Gemini has (the others are not sent: it refuses unknown ones)
    for name, wire in (
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if request.extra.get(name) is not None:
            config[wire] = request.extra[name]
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema:
            config["responseSchema"] = clean_schema(fmt.schema)
    return config


def _function_declarations(tools: list[Tool]) -> list[dict[str, Any]]:
    """``tools``: the request's tools as one ``functionDeclarations`` entry."""
    return [
        {
            "functionDeclarations": [
                {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    **({"parameters": clean_schema(tool.parameters)} if tool.parameters else {}),
                }
                for tool in tools
            ]
        }
    ]


def _calling_mode(tool_choice: str | dict[str, str]) -> dict[str, Any]:
    """``toolConfig.functionCallingConfig`` for a tool choice."""
    if isinstance(tool_choice, dict):
        return {"mode": "ANY", "allowedFunctionNames": [tool_choice["name"]]}
    return {"mode": {"required": "ANY", "none": "NONE"}.get(tool_choice, "AUTO")}


def request_to_wire(request: ChatRequest) -> dict[str, Any]:
    """The ``generateContent`` / ``streamGenerateContent`` request body."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for message in request.messages:
        if message.role in ("system", "developer"):
            system.append({"text": message.text()})
        elif message.role == "assistant":
            _add(contents, "model", _model_parts(message, call_names))
        elif message.role == "tool":
            name = call_names.get(message.tool_call_id or "", message.name or "tool")
            response = {"name": name, "response": _json_or_text(message.text())}
            _add(contents, "user", [{"functionResponse": response}])
        else:
            _add(contents, "user", _parts(message))
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    if request.tools:  # with tool_choice "none" too (mode NONE below)
        body["tools"] = _function_declarations(request.tools)
        if request.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _calling_mode(request.tool_choice)}
    return body


def usage_from_wire(data: dict[str, Any] | None) -> Usage:
    data = data or {}
    thoughts = int(data.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=int(data.get("promptTokenCount") or 0),
        completion_tokens=int(data.get("candidatesTokenCount") or 0) + thoughts,
        cached_tokens=int(data.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


def _call_id(response_id: str, index: int, name: str) -> str:
    digest = hashlib.sha1(f"{response_id}:{index}:{name}".encode(), usedforsecurity=False)
    return "call_" + digest.hexdigest()[:24]


def _check_blocked(data: dict[str, Any]) -> None:
    feedback = data.get("promptFeedback") or {}
    reason = feedback.get("blockReason")
    if reason and not data.get("candidates"):
        raise ProviderError(
            ErrorKind.CONTENT_FILTER,
            f"prompt blocked by the provider's safety system ({reason})",
            provider_code=str(reason),
        )


def _candidate(
    candidate: dict[str, Any], response_id: str, call_offset: int = 0
) -> tuple[list[str], list[ToolCall], FinishReason | None]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if part.get("thought"):
            continue
        if "text" in part:
            texts.append(part["text"])
        elif "functionCall" in part:
            call = part["functionCall"]
            index = call_offset + len(calls)
            calls.append(
                ToolCall(
                    id=call.get("id") or _call_id(response_id, index, call["name"]),
                    name=call["name"],
                    arguments=orjson.dumps(call.get("args") or {}).decode(),
                )
            )
    raw_finish = candidate.get("finishReason")
    finish: FinishReason | None = None
    if raw_finish:
        finish = _FINISH.get(raw_finish, "stop")
        if finish == "stop" and (calls or call_offset):
            finish = "tool_calls"
    return texts, calls, finish


def response_from_wire(data: dict[str, Any], fallback_model: str) -> ChatResponse:
    _check_blocked(data)
    response_id = data.get("responseId") or ""
    choices = []
    for position, candidate in enumerate(data.get("candidates") or ()):
        texts, calls, finish = _candidate(candidate, response_id)
        text = "".join(texts) if texts else None
        choices.append(
            Choice(
                index=int(candidate.get("index", position)),
                message=Message(role="assistant", content=text, tool_calls=calls or None),
                finish_reason=finish or "stop",
            )
        )
    if not choices:
        raise ProviderError(ErrorKind.PROTOCOL, "Gemini response has no candidates")
    return ChatResponse(
        id=response_id,
        model=data.get("modelVersion") or fallback_model,
        created=0,
        choices=choices,
        usage=usage_from_wire(data.get("usageMetadata")),
    )


def error_from_body(status: int, headers: httpx.Headers, data: Any) -> ProviderError:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):  # some proxies wrap it
        error = data[0].get("error")
    if not isinstance(error, dict):
        error = {}
    message = str(error.get("message") or "")
    grpc_status = str(error.get("status") or "")
    kind: ErrorKind | None = None
    retry_after: float | None = None
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        if detail.get("reason") in ("API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED"):
            kind = ErrorKind.AUTHENTICATION  # Gemini answers a bad key with 400
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            with contextlib.suppress(ValueError):
                retry_after = float(delay[:-1])
    if kind is None:  # INVALID_ARGUMENT etc.: the status and message decide (context length)
        kind = _STATUS_KINDS.get(grpc_status)
    result = error_from_status(
        status, headers, message or grpc_status, grpc_status or None, kind=kind
    )
    if retry_after is not None and result.retry_after is None:
        result.retry_after = retry_after
    return result


class GeminiStreamDecoder(StreamDecoder):
    def __init__(self, model: str) -> None:
        self.sse = SSEDecoder()
        self.model = model
        self.done = False
        self.id = ""
        self.usage: Usage | None = None
        self.finish_reason: FinishReason | None = None
        self.calls = 0
        self.started = False

    def decode(self, data: bytes, out: list[ChatChunk]) -> None:
        for _event, payload in self.sse.feed(data):
            obj = loads(payload, "stream chunk")
            if "error" in obj:
                raise error_from_body(0, httpx.Headers(), obj)
            _check_blocked(obj)
            self.id = obj.get("responseId") or self.id
            self.model = obj.get("modelVersion") or self.model
            if obj.get("usageMetadata"):
                self.usage = usage_from_wire(obj["usageMetadata"])
            for candidate in obj.get("candidates") or ():
                texts, calls, finish = _candidate(candidate, self.id, self.calls)
                delta = Delta(content="".join(texts) if texts else None)
                if not self.started:
                    delta.role = "assistant"
                    self.started = True
                if calls:
                    delta.tool_calls = [
                        ToolCallDelta(
                            index=self.calls + i, id=c.id, name=c.name, arguments=c.arguments
                        )
                        for i, c in enumerate(calls)
                    ]
                    self.calls += len(calls)
                if finish is not None:
                    self.finish_reason = finish
                out.append(
                    ChatChunk(
                        id=self.id,
                        model=self.model,
                        created=0,
                        choices=[
                            ChunkChoice(
                                index=int(candidate.get("index", 0)),
                                delta=delta,
                                finish_reason=finish,
                            )
                        ],
                    )
                )

    def finish(self) -> list[ChatChunk]:
        if self.finish_reason is None or self.sse.pending():
            raise ProviderError(ErrorKind.PROTOCOL, "Gemini stream ended without a finishReason")
        self.done = True
        return [
            ChatChunk(
                id=self.id, model=self.model, created=0, choices=[], usage=self.usage or Usage()
            )
        ]


# batchEmbedContents takes at most this many requests
EMBED_BATCH = 100


class GeminiAdapter(Adapter):
    kind = "gemini"
    supports_embeddings = True

    def build(
        self, endpoint: Endpoint, request: ChatRequest, *, stream: bool
    ) -> tuple[str, dict[str, str], bytes]:
        model = quote(endpoint.model, safe="")
        if stream:
            path = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
        else:
            path = f"/v1beta/models/{model}:generateContent"
        headers = {"content-type": "application/json"}
        if endpoint.api_key:
            headers["x-goog-api-key"] = endpoint.api_key
        body = request_to_wire(request)
        return join_url(endpoint.base_url, path), headers, orjson.dumps(body)

    def parse(self, endpoint: Endpoint, request: ChatRequest, data: Any) -> ChatResponse:
        return response_from_wire(data, endpoint.model)

    def decoder(self, endpoint: Endpoint, request: ChatRequest) -> StreamDecoder:
        return GeminiStreamDecoder(endpoint.model)

    def parse_error(self, status: int, headers: httpx.Headers, body: bytes) -> ProviderError:
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            data = {"error": {"message": body[:200].decode("utf-8", "replace")}}
        return error_from_body(status, headers, data)

    # ------------------------------------------------------------ embeddings

    def build_embedding(
        self, endpoint: Endpoint, request: EmbeddingRequest
    ) -> tuple[str, dict[str, str], bytes]:
        if any(not isinstance(item, str) for item in request.input):
            raise ProviderError(
                ErrorKind.UNSUPPORTED, "Gemini embeddings take text, not token arrays", status=400
            )
        name = f"models/{endpoint.model}"
        extra: dict[str, Any] = {}
        if request.dimensions is not None:
            extra["outputDimensionality"] = request.dimensions
        body = {
            "requests": [
                {"model": name, "content": {"parts": [{"text": text}]}, **extra}
                for text in request.input
            ]
        }
        path = f"/v1beta/models/{quote(endpoint.model, safe='')}:batchEmbedContents"
        headers = {"content-type": "application/json"}
        if endpoint.api_key:
            headers["x-goog-api-key"] = endpoint.api_key
        return join_url(endpoint.base_url, path), headers, orjson.dumps(body)

    def parse_embedding(
        self, endpoint: Endpoint, request: EmbeddingRequest, data: Any
    ) -> EmbeddingResponse:
        vectors = [[float(v) for v in item["values"]] for item in data["embeddings"]]
        if len(vectors) != len(request.input):
            raise ValueError(f"{len(vectors)} embeddings for {len(request.input)} inputs")
        return EmbeddingResponse(
            model=endpoint.model,
            data=[Embedding(index=i, vector=v) for i, v in enumerate(vectors)],
            usage=Usage(),  # Gemini counts no tokens here: the gateway's estimate is charged
        )

    async def embed(
        self, endpoint: Endpoint, request: EmbeddingRequest, *, timeouts: Timeouts | None = None
    ) -> EmbeddingResponse:
        if len(request.input) <= EMBED_BATCH:
            return await super().embed(endpoint, request, timeouts=timeouts)
        parts = [
            dataclasses.replace(request, input=request.input[i : i + EMBED_BATCH])
            for i in range(0, len(request.input), EMBED_BATCH)
        ]
        answers = await asyncio.gather(
            *(super(GeminiAdapter, self).embed(endpoint, p, timeouts=timeouts) for p in parts)
        )
        data = [
            Embedding(index=offset * EMBED_BATCH + e.index, vector=e.vector)
            for offset, answer in enumerate(answers)
            for e in answer.data
        ]
        return EmbeddingResponse(model=endpoint.model, data=data, usage=Usage())
