"""Legacy Completions (``POST /v1/completions``): one text prompt, served by a chat model as a
single user message; rendered back as ``text_completion`` objects."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.providers.types import ChatChunk, ChatRequest, ChatResponse, Message
from gateway.wire.common import (
    Inbound,
    check_logit_bias,
    get_bool,
    get_dict,
    get_int,
    get_str,
    missing,
    parse_override,
    reject_unknown,
    require_model,
    type_name,
)
from gateway.wire.openai_chat import parse_sampling, usage_json

PASSTHROUGH = frozenset({"presence_penalty", "frequency_penalty", "logit_bias"})
KNOWN = frozenset(
    {
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "stream_options",
        "user",
        "echo",
        "suffix",
        "best_of",
        "logprobs",
        "megarouter",
    }
    | PASSTHROUGH
)
DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for this endpoint


def parse_completion(data: dict[str, Any]) -> Inbound:
    reject_unknown(data, KNOWN)
    check_logit_bias(data)
    model = require_model(data)
    prompt = data.get("prompt")
    if prompt is None:
        raise missing("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise UnsupportedParameter(
                "'prompt' must be a string (or an array holding exactly one string); batched "
                "and token-array prompts are not supported.",
                param="prompt",
            )
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest(
            f"Invalid type for 'prompt': expected a string, but got {type_name(prompt)}.",
            param="prompt",
            code="invalid_type",
        )
    if get_bool(data, "echo"):
        raise UnsupportedParameter("'echo' is not supported.", param="echo")
    if get_str(data, "suffix"):
        raise UnsupportedParameter("'suffix' is not supported.", param="suffix")
    if (get_int(data, "best_of", minimum=1) or 1) > 1:
        raise UnsupportedParameter("'best_of' greater than 1 is not supported.", param="best_of")
    if get_int(data, "logprobs", minimum=0, maximum=5):
        raise UnsupportedParameter(
            "'logprobs' is not supported on /v1/completions; use /v1/chat/completions.",
            param="logprobs",
        )
    chat = ChatRequest(messages=[Message(role="user", content=prompt)])
    parse_sampling(data, chat)
    if chat.max_tokens is None:
        chat.max_tokens = DEFAULT_MAX_TOKENS
    chat.user = get_str(data, "user")
    chat.stream = bool(get_bool(data, "stream"))
    options = get_dict(data, "stream_options")
    if options is not None:
        if not chat.stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        reject_unknown(options, frozenset({"include_usage"}), "stream_options.")
        chat.include_usage = bool(
            get_bool(options, "include_usage", "stream_options.include_usage")
        )
    chat.extra = {key: data[key] for key in PASSTHROUGH if data.get(key) is not None}
    return Inbound(model=model, chat=chat, override=parse_override(data))


def _finish(reason: str | None) -> str | None:
    if reason in (None, "stop", "length", "content_filter"):
        return reason
    return "stop"


def render_completion(response: ChatResponse, model_id: str) -> dict[str, Any]:
    return {
        "id": _cmpl_id(response.id),
        "object": "text_completion",
        "created": response.created,
        "model": model_id,
        "choices": [
            {
                "index": choice.index,
                "text": choice.message.text(),
                "logprobs": None,
                "finish_reason": _finish(choice.finish_reason) or "stop",
            }
            for choice in response.choices
        ],
        "usage": usage_json(response.usage),
    }


def render_completion_chunk(
    chunk: ChatChunk, model_id: str, *, include_usage: bool
) -> dict[str, Any] | None:
    choices = [
        {
            "index": choice.index,
            "text": choice.delta.content or "",
            "logprobs": None,
            "finish_reason": _finish(choice.finish_reason),
        }
        for choice in chunk.choices
        if choice.delta.content or choice.finish_reason
    ]
    if not choices and not (include_usage and chunk.usage is not None):
        return None  # a role-only opening chunk has no text to send
    body: dict[str, Any] = {
        "id": _cmpl_id(chunk.id),
        "object": "text_completion",
        "created": chunk.created,
        "model": model_id,
        "choices": choices,
    }
    if include_usage:
        body["usage"] = usage_json(chunk.usage) if chunk.usage is not None else None
    return body


def _cmpl_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("cmpl-") else f"cmpl-{upstream_id}"
