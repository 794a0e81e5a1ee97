"""The simulator's Gemini surface: ``POST /gemini/v1beta/models/{model}:generateContent``,
``:streamGenerateContent?alt=sse`` and ``:batchEmbedContents``."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.simulator.engine import (
    Generation,
    Knobs,
    SimRequest,
    SimTool,
    embedding_vector,
    generate,
)
from gateway.simulator.replies import Reply, StreamReply, json_reply

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}


def _text_of(parts: Any) -> str:
    out = []
    for part in parts or ():
        if not isinstance(part, dict):
            continue
        if "text" in part:
            out.append(part["text"])
        elif "functionCall" in part:
            out.append(orjson.dumps(part["functionCall"].get("args") or {}).decode())
        elif "functionResponse" in part:
            out.append(orjson.dumps(part["functionResponse"].get("response") or {}).decode())
    return " ".join(out)


def parse(model: str, knobs: Knobs, body: dict[str, Any], *, stream: bool) -> SimRequest:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ValueError("* GenerateContentRequest.contents: contents is not specified")
    texts: list[str] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if system:
        texts.append(_text_of(system.get("parts")))
    last_user = ""
    last_is_tool_result = False
    tool_results = 0
    for content in contents:
        parts = content.get("parts") or []
        text = _text_of(parts)
        texts.append(text)
        if content.get("role", "user") == "user":
            last_user = text
            results = sum(isinstance(p, dict) and "functionResponse" in p for p in parts)
            tool_results += results
            last_is_tool_result = results > 0
    tools: list[SimTool] = []
    for tool in body.get("tools") or ():
        for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or ():
            tools.append(SimTool(decl["name"], decl.get("parameters")))
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = config.get("mode")
    tool_choice: str | dict[str, str] | None = {
        "ANY": "required",
        "NONE": "none",
        "AUTO": "auto",
    }.get(mode or "")
    if mode == "ANY" and config.get("allowedFunctionNames"):
        tool_choice = {"name": config["allowedFunctionNames"][0]}
    gen_config = body.get("generationConfig") or {}
    json_mode = None
    if gen_config.get("responseMimeType") == "application/json":
        json_mode = "schema" if gen_config.get("responseSchema") else "object"
    max_tokens = gen_config.get("maxOutputTokens")
    return SimRequest(
        provider="gemini",
        model=model,
        knobs=knobs,
        texts=texts,
        last_user=last_user,
        last_is_tool_result=last_is_tool_result,
        tool_results=tool_results,
        prefill=contents[-1].get("role") == "model",
        max_tokens=int(max_tokens) if max_tokens is not None else None,
        tools=tools,
        tools_json=orjson.dumps(body["tools"]).decode() if tools else "",
        tool_choice=tool_choice,
        json_mode=json_mode,
        schema=gen_config.get("responseSchema"),
        stream=stream,
    )


def _usage(gen: Generation, candidates: int | None = None) -> dict[str, Any]:
    out = candidates if candidates is not None else gen.completion_tokens - gen.reasoning_tokens
    usage = {
        "promptTokenCount": gen.prompt_tokens,
        "candidatesTokenCount": out,
        "totalTokenCount": gen.prompt_tokens + out + gen.reasoning_tokens,
    }
    if gen.cached_tokens:
        usage["cachedContentTokenCount"] = gen.cached_tokens
    if gen.reasoning_tokens:
        usage["thoughtsTokenCount"] = gen.reasoning_tokens
    return usage


def _blocked(gen: Generation, model: str) -> dict[str, Any]:
    return {
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
            ],
        },
        "usageMetadata": {
            "promptTokenCount": gen.prompt_tokens,
            "totalTokenCount": gen.prompt_tokens,
        },
        "modelVersion": model,
        "responseId": gen.id_hash,
    }


def _parts(gen: Generation) -> list[dict[str, Any]]:
    if gen.tool_calls:
        return [
            {"functionCall": {"name": c.name, "args": orjson.loads(c.arguments)}}
            for c in gen.tool_calls
        ]
    return [{"text": gen.text or ""}]


def generate_reply(request: SimRequest) -> Reply:
    gen = generate(request)
    if gen.finish == "content_filter":
        return json_reply(200, _blocked(gen, request.model))
    return json_reply(
        200,
        {
            "candidates": [
                {
                    "content": {"parts": _parts(gen), "role": "model"},
                    "finishReason": _FINISH[gen.finish],
                    "index": 0,
                }
            ],
            "usageMetadata": _usage(gen),
            "modelVersion": request.model,
            "responseId": gen.id_hash,
        },
    )


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


def generate_stream(request: SimRequest) -> StreamReply:
    gen = generate(request)
    if gen.finish == "content_filter":
        return StreamReply([_sse(_blocked(gen, request.model))], 0, 0, b"data: {\r\n\r\n")
    events: list[bytes] = []
    if gen.tool_calls:
        chunks: list[tuple[list[dict[str, Any]], int]] = [(_parts(gen), gen.completion_tokens)]
    else:
        chunks = [([{"text": piece}], 1) for piece in gen.pieces] or [([{"text": ""}], 0)]
    sent = 0
    for position, (parts, tokens) in enumerate(chunks):
        sent += tokens
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        last = position == len(chunks) - 1
        if last:
            candidate["finishReason"] = _FINISH[gen.finish]
        events.append(
            _sse(
                {
                    "candidates": [candidate],
                    "usageMetadata": _usage(gen, candidates=sent),
                    "modelVersion": request.model,
                    "responseId": gen.id_hash,
                }
            )
        )
    return StreamReply(
        events=events,
        token_start=0,
        terminator=1,
        malformed=b'data: {"candidates": [{"content": {"parts": [{"te\r\n\r\n',
    )


# Google's limits: 100 requests to a batchEmbedContents call, 3,072 dimensions at most
MAX_EMBED_REQUESTS = 100
EMBED_DIMENSIONS = 3072


def embed_reply(model: str, knobs: Knobs, body: dict[str, Any]) -> Reply:
    """``:batchEmbedContents``: one ``{"values": [...]}`` per request, in order; every request
    must name this model (``models/{model}``), as the real API insists."""
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ValueError("'requests' must be a non-empty array")
    if len(requests) > MAX_EMBED_REQUESTS:
        raise ValueError(f"at most {MAX_EMBED_REQUESTS} requests can be in one batch")
    native = knobs.dims or EMBED_DIMENSIONS
    out = []
    for index, item in enumerate(requests):
        if not isinstance(item, dict) or item.get("model") != f"models/{model}":
            raise ValueError(f"requests[{index}].model must be 'models/{model}'")
        text = _text_of((item.get("content") or {}).get("parts"))
        dims = item.get("outputDimensionality", native)
        if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= native:
            raise ValueError(f"outputDimensionality must be an integer from 1 to {native}")
        out.append({"values": embedding_vector(text, dims)})
    return json_reply(200, {"embeddings": out})


def _error(code: int, status: str, message: str, details: list[Any] | None = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def error_reply(
    fault: str,
    *,
    retry_headers: list[tuple[str, str]],
    retry_seconds: float = 1.0,
    prompt_tokens: int = 0,
    window: int = 0,
    detail: str = "",
) -> Reply:
    if fault == "429":
        return json_reply(
            429,
            _error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{retry_seconds:g}s",
                    }
                ],
            ),
            retry_headers,
        )
    if fault == "401":  # Gemini answers an invalid key with 400 INVALID_ARGUMENT
        return json_reply(
            400,
            _error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            ),
        )
    if fault == "403":
        return json_reply(
            403,
            _error(
                403,
                "PERMISSION_DENIED",
                detail
                or "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            ),
        )
    if fault == "context":
        return json_reply(
            400,
            _error(
                400,
                "INVALID_ARGUMENT",
                f"The input token count ({prompt_tokens}) exceeds the maximum number of tokens "
                f"allowed ({window}).",
            ),
        )
    if fault == "400":
        return json_reply(400, _error(400, "INVALID_ARGUMENT", detail or "Invalid argument."))
    if fault in ("503", "529"):
        return json_reply(
            int(fault),
            _error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            retry_headers,
        )
    return json_reply(
        500,
        _error(500, "INTERNAL", "An internal error has occurred. Please retry or report."),
    )
