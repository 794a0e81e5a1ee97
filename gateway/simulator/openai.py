"""The simulator's OpenAI (and Azure OpenAI) surface: chat completions, legacy completions,
embeddings, models. Shapes follow the OpenAI API reference (and validate against the vendored
schemas in gateway/schemas/openai/)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.simulator.engine import (
    Generation,
    Knobs,
    SimRequest,
    SimTool,
    count_tokens,
    embedding_vector,
    generate,
    pack_base64,
    pieces,
)
from gateway.simulator.replies import Reply, StreamReply, json_reply, sse

MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "gpt-3.5-turbo-instruct",
)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def parse_chat(provider: str, model: str, knobs: Knobs, body: dict[str, Any]) -> SimRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty array")
    texts: list[str] = []
    last_user = ""
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError("each message needs a 'role'")
        text = _text_of(message.get("content"))
        for call in message.get("tool_calls") or ():
            text += " " + call.get("function", {}).get("arguments", "")
        texts.append(text)
        if message["role"] == "user":
            last_user = text
    tools = [
        SimTool(t["function"]["name"], t["function"].get("parameters"))
        for t in body.get("tools") or ()
        if t.get("type") == "function"
    ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        choice = {"name": (choice.get("function") or {}).get("name", "")}
    fmt = body.get("response_format") or {}
    json_mode = None
    schema = None
    if fmt.get("type") == "json_object":
        json_mode = "object"
    elif fmt.get("type") == "json_schema":
        json_mode = "schema"
        schema = (fmt.get("json_schema") or {}).get("schema")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return SimRequest(
        provider=provider,
        model=model,
        knobs=knobs,
        texts=texts,
        last_user=last_user,
        last_is_tool_result=messages[-1].get("role") == "tool",
        tool_results=sum(m.get("role") == "tool" for m in messages),
        prefill=messages[-1].get("role") == "assistant",
        max_tokens=int(max_tokens) if max_tokens is not None else None,
        tools=tools,
        tools_json=orjson.dumps(body["tools"]).decode() if tools else "",
        tool_choice=choice,
        json_mode=json_mode,
        schema=schema,
        stream=bool(body.get("stream")),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        n=_choices(body.get("n")),
        thinking=bool(knobs.think),
    )


def usage(gen: Generation) -> dict[str, Any]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": gen.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": gen.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _message(gen: Generation) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": gen.text,
        "refusal": None,
        "annotations": [],
    }
    if gen.finish == "content_filter":
        message["refusal"] = "I'm sorry, but I can't help with that request."
    elif gen.thinking is not None:  # knob think: reasoning beside the answer, as DeepSeek
        message["reasoning_content"] = gen.thinking
    if gen.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in gen.tool_calls
        ]
    return message


def chat_reply(request: SimRequest) -> Reply:
    gens = [generate(request, i) for i in range(max(1, request.n))]
    first = gens[0]
    completion = sum(g.completion_tokens for g in gens)
    body = {
        "id": "chatcmpl-" + first.id_hash,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {"index": i, "message": _message(g), "logprobs": None, "finish_reason": g.finish}
            for i, g in enumerate(gens)
        ],
        "usage": usage(first)
        | {"completion_tokens": completion, "total_tokens": first.prompt_tokens + completion},
        "system_fingerprint": "fp_megarouter_sim",
        "service_tier": "default",
    }
    return json_reply(200, body)


def chat_stream(request: SimRequest) -> StreamReply:
    gen = generate(request)
    base = {
        "id": "chatcmpl-" + gen.id_hash,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": "fp_megarouter_sim",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(
            base
            | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        )

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if gen.thinking is not None and gen.finish != "content_filter":
        events.extend(chunk({"reasoning_content": piece}) for piece in pieces(gen.thinking))
    if gen.tool_calls:
        for index, call in enumerate(gen.tool_calls):
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            events.extend(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                for piece in pieces(call.arguments)
            )
    elif gen.finish == "content_filter":
        events.append(chunk({"refusal": "I'm sorry, but I can't help with that request."}))
    else:
        events.extend(chunk({"content": piece}) for piece in gen.pieces)
    events.append(chunk({}, gen.finish))
    if request.include_usage:
        events.append(sse(base | {"choices": [], "usage": usage(gen)}))
    events.append(b"data: [DONE]\n\n")
    return StreamReply(
        events=events,
        token_start=1,
        terminator=1,
        malformed=b'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n',
    )


def completion_reply(model: str, knobs: Knobs, body: dict[str, Any]) -> Reply:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(str(p) for p in prompt)
    if not isinstance(prompt, str):
        raise ValueError("'prompt' must be a string")
    max_tokens = body.get("max_tokens", 16)
    request = SimRequest(
        provider="openai",
        model=model,
        knobs=knobs,
        texts=[prompt],
        last_user=prompt,
        max_tokens=int(max_tokens) if max_tokens is not None else None,
    )
    gen = generate(request)
    return json_reply(
        200,
        {
            "id": "cmpl-" + gen.id_hash,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_megarouter_sim",
            "choices": [
                {"text": gen.text or "", "index": 0, "logprobs": None, "finish_reason": gen.finish}
            ],
            "usage": {
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "total_tokens": gen.prompt_tokens + gen.completion_tokens,
            },
        },
    )


MAX_CHOICES = 128  # OpenAI's bound on ``n``
MAX_EMBEDDING_INPUTS = 2048


def _choices(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHOICES:
        raise ValueError(f"'n' must be an integer from 1 to {MAX_CHOICES}")
    return value


def embeddings_reply(model: str, knobs: Knobs, body: dict[str, Any]) -> Reply:
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = raw
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [" ".join(str(x) for x in raw)]
    elif isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
        inputs = [" ".join(str(t) for t in x) for x in raw]
    else:
        raise ValueError("'input' must be a string, an array of strings or token arrays")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise ValueError(f"'input' takes at most {MAX_EMBEDDING_INPUTS} items")
    native = knobs.dims or (3072 if "large" in model else 1536)
    dims = body.get("dimensions")
    if dims is None:
        dims = native
    elif isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= native:
        # bounded as the real API is, so no request can make the simulator allocate without end
        raise ValueError(f"'dimensions' must be an integer from 1 to {native} for this model")
    base64_format = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, text in enumerate(inputs):
        vector = embedding_vector(text, int(dims))
        tokens += count_tokens(text)
        data.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": pack_base64(vector) if base64_format else vector,
            }
        )
    return json_reply(
        200,
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


def models_reply() -> Reply:
    created = 1_700_000_000
    return json_reply(
        200,
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "megarouter-sim"}
                for m in MODELS
            ],
        },
    )


# ---------------------------------------------------------------- errors

# Faults answered with a plain error object: fault -> (status, message, type, retry headers?).
_SERVER_ERRORS: dict[str, tuple[int, str, str, bool]] = {
    "529": (529, "Overloaded", "overloaded_error", True),
    "503": (
        503,
        "The engine is currently overloaded, please try again later",
        "server_error",
        True,
    ),
    "502": (502, "Bad gateway.", "server_error", False),
}
_INTERNAL_ERROR = (
    500,
    "The server had an error while processing your request. Sorry about that!",
    "server_error",
    False,
)


def _error(message: str, err_type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _rate_limit_body(azure: bool) -> dict[str, Any]:
    """The 429 body: Azure's bare ``code`` / ``message`` object, or OpenAI's error."""
    if azure:
        return {
            "error": {
                "code": "429",
                "message": "Requests to the ChatCompletions_Create Operation under Azure "
                "OpenAI API have exceeded call rate limit of your current pricing tier. "
                "Please retry after a moment.",
            }
        }
    return _error(
        "Rate limit reached for requests per min (RPM). Please try again later.",
        "requests",
        "rate_limit_exceeded",
    )


def _auth_body(azure: bool, detail: str) -> dict[str, Any]:
    """The 401 / 403 body: Azure's subscription-key message, or OpenAI's invalid_api_key."""
    if azure:
        return {
            "error": {
                "code": "401",
                "message": "Access denied due to invalid subscription key or wrong API "
                "endpoint. Make sure to provide a valid key for an active subscription "
                "and use a correct regional API endpoint for your resource.",
            }
        }
    message = (
        detail
        or "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return _error(message, "invalid_request_error", "invalid_api_key")


def _context_body(prompt_tokens: int, window: int) -> dict[str, Any]:
    """The 400 context_length_exceeded body."""
    return _error(
        f"This model's maximum context length is {window} tokens. However, your "
        f"messages resulted in {prompt_tokens} tokens. Please reduce the length of "
        "the messages.",
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )


def _filter_body() -> dict[str, Any]:
    """Azure's 400 for a prompt its content filter rejects."""
    return {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure "
            "OpenAI's content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    "hate": {"filtered": True, "severity": "high"},
                },
            },
        }
    }


def error_reply(
    fault: str,
    *,
    azure: bool,
    retry_headers: list[tuple[str, str]],
    prompt_tokens: int = 0,
    window: int = 0,
    detail: str = "",
) -> Reply:
    """The OpenAI (or Azure OpenAI) error reply for an error fault."""
    if fault == "429":
        return json_reply(429, _rate_limit_body(azure), retry_headers)
    if fault in ("401", "403"):
        return json_reply(int(fault), _auth_body(azure, detail))
    if fault == "context":
        return json_reply(400, _context_body(prompt_tokens, window))
    if fault == "filter":  # Azure rejects a filtered prompt with 400
        return json_reply(400, _filter_body())
    if fault == "400":
        return json_reply(
            400, _error(detail or "Invalid request (simulated).", "invalid_request_error", None)
        )
    status, message, err_type, retries = _SERVER_ERRORS.get(fault, _INTERNAL_ERROR)
    return json_reply(status, _error(message, err_type, None), retry_headers if retries else None)


def not_found(path: str) -> Reply:
    return json_reply(404, _error(f"Invalid URL (POST {path})", "invalid_request_error", None))
