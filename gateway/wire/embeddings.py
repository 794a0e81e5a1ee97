"""Embeddings (``POST /v1/embeddings``). Upstream is always asked for floats; ``base64`` (the
OpenAI SDK's default) is encoded here as little-endian float32, as OpenAI does."""

from __future__ import annotations

import base64
import struct
from typing import Any

from gateway.errors import InvalidRequest
from gateway.providers.types import EmbeddingRequest, EmbeddingResponse
from gateway.wire.common import (
    get_choice,
    get_int,
    get_str,
    missing,
    parse_override,
    reject_unknown,
    require_model,
    type_name,
)
from orgs.policy import PolicySpec

KNOWN = frozenset({"model", "input", "dimensions", "encoding_format", "user", "megarouter"})
MAX_INPUTS = 2048


def parse_embeddings(
    data: dict[str, Any],
) -> tuple[str, EmbeddingRequest, PolicySpec | None, str]:
    """Returns (model, request, override, encoding_format asked by the client)."""
    reject_unknown(data, KNOWN)
    model = require_model(data)
    raw = data.get("input")
    if raw is None:
        raise missing("input")
    inputs: list[str] | list[list[int]]
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise InvalidRequest("'input' must not be empty.", param="input", code="empty_array")
        if all(isinstance(item, str) for item in raw):
            inputs = list(raw)
        elif all(_is_token(item) for item in raw):
            inputs = [list(raw)]
        elif all(isinstance(item, list) and item and all(map(_is_token, item)) for item in raw):
            inputs = [list(item) for item in raw]
        else:
            raise InvalidRequest(
                "Invalid 'input': expected a string, an array of strings, an array of token "
                "ids or an array of token-id arrays.",
                param="input",
                code="invalid_type",
            )
    else:
        raise InvalidRequest(
            f"Invalid type for 'input': expected a string or an array, but got {type_name(raw)}.",
            param="input",
            code="invalid_type",
        )
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' takes at most {MAX_INPUTS} items.", param="input", code="invalid_value"
        )
    if any(isinstance(item, str) and not item for item in inputs):
        raise InvalidRequest(
            "'input' must not contain empty strings.", param="input", code="invalid_value"
        )
    encoding = get_choice(data, "encoding_format", ("float", "base64")) or "float"
    request = EmbeddingRequest(
        input=inputs,
        dimensions=get_int(data, "dimensions", minimum=1),
        encoding_format="float",
        user=get_str(data, "user"),
    )
    return model, request, parse_override(data), encoding


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def render_embeddings(
    response: EmbeddingResponse, model_id: str, encoding_format: str
) -> dict[str, Any]:
    data = []
    for item in response.data:
        vector: list[float] | str = item.vector
        if encoding_format == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(item.vector)}f", *item.vector)).decode()
        data.append({"object": "embedding", "index": item.index, "embedding": vector})
    return {
        "object": "list",
        "data": data,
        "model": model_id,
        "usage": {
            "prompt_tokens": response.usage.prompt_tokens,
            "total_tokens": response.usage.prompt_tokens,
        },
    }
