"""The simulator's Bedrock runtime surface: ``POST /bedrock/model/{modelId}/converse`` and
``/converse-stream`` (binary event stream). Requests must carry a well-formed SigV4
``Authorization`` header (or a Bedrock API key as a bearer token); the signature itself is not
verified (the simulator does not know the secret)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.providers.eventstream import encode_message
from gateway.simulator.engine import Generation, Knobs, SimRequest, SimTool, generate, pieces
from gateway.simulator.replies import Reply, StreamReply, json_reply

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "content_filtered",
}
SIGV4_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=[^/\s]+/\d{8}/[a-z0-9-]+/bedrock/aws4_request, "
    r"SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}$"
)
EVENTSTREAM = "application/vnd.amazon.eventstream"


def _text_of(content: Any) -> str:
    out = []
    for block in content or ():
        if not isinstance(block, dict):
            continue
        if "text" in block:
            out.append(block["text"])
        elif "toolUse" in block:
            out.append(orjson.dumps(block["toolUse"].get("input") or {}).decode())
        elif "toolResult" in block:
            out.append(_text_of(block["toolResult"].get("content")))
        elif "json" in block:
            out.append(orjson.dumps(block["json"]).decode())
    return " ".join(out)


def parse(model: str, knobs: Knobs, body: dict[str, Any], *, stream: bool) -> SimRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("The messages field is required.")
    texts: list[str] = []
    for block in body.get("system") or ():
        texts.append(block.get("text", ""))
    last_user = ""
    last_is_tool_result = False
    tool_results = 0
    for message in messages:
        text = _text_of(message.get("content"))
        texts.append(text)
        if message.get("role") == "user":
            last_user = text
            results = sum(
                isinstance(b, dict) and "toolResult" in b for b in message.get("content") or ()
            )
            tool_results += results
            last_is_tool_result = results > 0
    tool_config = body.get("toolConfig") or {}
    tools = [
        SimTool(t["toolSpec"]["name"], (t["toolSpec"].get("inputSchema") or {}).get("json"))
        for t in tool_config.get("tools") or ()
        if "toolSpec" in t
    ]
    choice = tool_config.get("toolChoice") or {}
    tool_choice: str | dict[str, str] | None = None
    if "any" in choice:
        tool_choice = "required"
    elif "auto" in choice:
        tool_choice = "auto"
    elif "tool" in choice:
        tool_choice = {"name": choice["tool"].get("name", "")}
    max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
    return SimRequest(
        provider="bedrock",
        model=model,
        knobs=knobs,
        texts=texts,
        last_user=last_user,
        last_is_tool_result=last_is_tool_result,
        tool_results=tool_results,
        prefill=messages[-1].get("role") == "assistant",
        max_tokens=int(max_tokens) if max_tokens is not None else None,
        tools=tools,
        tools_json=orjson.dumps(tool_config["tools"]).decode() if tools else "",
        tool_choice=tool_choice,
        stream=stream,
    )


def _usage(gen: Generation) -> dict[str, Any]:
    usage = {
        "inputTokens": gen.prompt_tokens - gen.cached_tokens,
        "outputTokens": gen.completion_tokens,
        "totalTokens": gen.prompt_tokens + gen.completion_tokens,
    }
    if gen.cached_tokens:
        usage["cacheReadInputTokens"] = gen.cached_tokens
        usage["cacheWriteInputTokens"] = 0
    return usage


def _content(gen: Generation) -> list[dict[str, Any]]:
    if gen.tool_calls:
        return [
            {
                "toolUse": {
                    "toolUseId": "tooluse_" + c.id[5:],
                    "name": c.name,
                    "input": orjson.loads(c.arguments),
                }
            }
            for c in gen.tool_calls
        ]
    if gen.finish == "content_filter":
        return [{"text": "Sorry, the model cannot answer this question."}]
    return [{"text": gen.text or ""}]


def converse_reply(request: SimRequest) -> Reply:
    gen = generate(request)
    return json_reply(
        200,
        {
            "output": {"message": {"role": "assistant", "content": _content(gen)}},
            "stopReason": _STOP[gen.finish],
            "usage": _usage(gen),
            "metrics": {"latencyMs": 1},
        },
    )


def _event(event_type: str, payload: dict[str, Any]) -> bytes:
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        orjson.dumps(payload),
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"message": message}),
    )


def converse_stream(request: SimRequest) -> StreamReply:
    gen = generate(request)
    events = [_event("messageStart", {"role": "assistant"})]
    if gen.tool_calls:
        for index, call in enumerate(gen.tool_calls):
            events.append(
                _event(
                    "contentBlockStart",
                    {
                        "contentBlockIndex": index,
                        "start": {
                            "toolUse": {"toolUseId": "tooluse_" + call.id[5:], "name": call.name}
                        },
                    },
                )
            )
            events.extend(
                _event(
                    "contentBlockDelta",
                    {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}},
                )
                for piece in pieces(call.arguments)
            )
            events.append(_event("contentBlockStop", {"contentBlockIndex": index}))
    else:
        text = _content(gen)[0]["text"]
        events.extend(
            _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
            for piece in pieces(text)
        )
        events.append(_event("contentBlockStop", {"contentBlockIndex": 0}))
    events.append(_event("messageStop", {"stopReason": _STOP[gen.finish]}))
    events.append(_event("metadata", {"usage": _usage(gen), "metrics": {"latencyMs": 1}}))
    broken = bytearray(
        _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}})
    )
    broken[-1] ^= 0xFF  # wrong message CRC
    return StreamReply(
        events=events,
        token_start=1,
        terminator=2,
        malformed=bytes(broken),
        content_type=EVENTSTREAM,
    )


_ERRORS = {
    "429": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    "401": (
        403,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    ),
    "403": (
        403,
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    "400": (
        400,
        "ValidationException",
        "Malformed input request, please reformat your input and try again.",
    ),
    "500": (500, "InternalServerException", "The server encountered an internal error."),
    "502": (502, "InternalServerException", "Bad gateway."),
    "503": (
        503,
        "ServiceUnavailableException",
        "The service is temporarily unable to handle the request.",
    ),
    "529": (529, "ServiceUnavailableException", "The model is overloaded."),
}


def error_reply(
    fault: str,
    *,
    retry_headers: list[tuple[str, str]],
    detail: str = "",
    **_: Any,
) -> Reply:
    if fault == "context":
        status, error_type, message = (
            400,
            "ValidationException",
            "Input is too long for requested model.",
        )
    elif fault == "missing-auth":
        status, error_type, message = (
            403,
            "MissingAuthenticationTokenException",
            ("Missing Authentication Token"),
        )
    else:
        status, error_type, message = _ERRORS.get(fault, _ERRORS["500"])
    headers = [
        ("x-amzn-ErrorType", f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/")
    ]
    if status in (429, 503, 529):
        headers.extend(retry_headers)
    return json_reply(status, {"message": detail or message}, headers)
