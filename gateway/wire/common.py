"""Shared parsing helpers: JSON decoding (orjson, once), typed field readers that name the
offending parameter, and the per-request routing override (``"megarouter": {...}``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.providers.types import ChatRequest
from orgs.policy import RULES, STRATEGIES, PolicyError, PolicySpec

ROUTING_ALIASES = ("auto", *(f"auto:{strategy}" for strategy in STRATEGIES))


def parse_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """Decode a request body: UTF-8 JSON whose top level is an object, sent as
    ``application/json`` (parameters such as ``charset=utf-8`` allowed), as the providers'
    APIs require: ``curl -d`` without a ``Content-Type`` header sends a form."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        shown = content_type or ""
        raise InvalidRequest(
            f"Unsupported content type: '{shown}'. This API method only accepts "
            f"'application/json' requests, but you specified the header 'Content-Type: {shown}'."
            " Please try again with a supported content type.",
            code="unsupported_content_type",
        )
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if _not_utf8(body):
            raise InvalidRequest(
                "The request body is not valid UTF-8.", code="invalid_encoding"
            ) from None
        raise InvalidRequest(
            f"The request body is not valid JSON ({_position(exc)}).", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            "The request body must be a JSON object.", code="invalid_json", param=None
        )
    return data


def _not_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _position(exc: orjson.JSONDecodeError) -> str:
    return f"line {exc.lineno}, column {exc.colno}"


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _wrong(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)}.",
        param=param,
        code="invalid_type",
    )


def get_str(
    data: dict[str, Any], key: str, param: str | None = None, *, required: bool = False
) -> str | None:
    param = param or key
    value = data.get(key)
    if value is None:
        if required:
            raise missing(param)
        return None
    if not isinstance(value, str):
        raise _wrong(param, "a string", value)
    return value


def require_str(data: dict[str, Any], key: str, param: str | None = None) -> str:
    value = get_str(data, key, param, required=True)
    assert value is not None
    return value


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def get_bool(data: dict[str, Any], key: str, param: str | None = None) -> bool | None:
    param = param or key
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _wrong(param, "a boolean", value)
    return value


def get_int(
    data: dict[str, Any],
    key: str,
    param: str | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    param = param or key
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _wrong(param, "an integer", value)
    _range(param, value, minimum, maximum)
    return value


def get_number(
    data: dict[str, Any],
    key: str,
    param: str | None = None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    param = param or key
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(param, "a number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"'{param}' must be a finite number.", param=param)
    _range(param, value, minimum, maximum)
    return float(value)


def _range(param: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise InvalidRequest(
            f"Invalid '{param}': {value} is less than the minimum of {minimum}.",
            param=param,
            code="invalid_value",
        )
    if maximum is not None and value > maximum:
        raise InvalidRequest(
            f"Invalid '{param}': {value} is greater than the maximum of {maximum}.",
            param=param,
            code="invalid_value",
        )


def get_list(data: dict[str, Any], key: str, param: str | None = None) -> list[Any] | None:
    param = param or key
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _wrong(param, "an array", value)
    return value


def get_dict(data: dict[str, Any], key: str, param: str | None = None) -> dict[str, Any] | None:
    param = param or key
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong(param, "an object", value)
    return value


def as_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrong(param, "an object", value)
    return value


def get_choice(
    data: dict[str, Any], key: str, choices: tuple[str, ...], param: str | None = None
) -> str | None:
    param = param or key
    value = get_str(data, key, param)
    if value is not None and value not in choices:
        raise InvalidRequest(
            f"Invalid value for '{param}': expected one of {', '.join(choices)}.",
            param=param,
            code="invalid_value",
        )
    return value


def get_stop(data: dict[str, Any], key: str = "stop", *, max_items: int = 4) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _wrong(key, "a string or an array of strings", value)
    if len(value) > max_items:
        raise InvalidRequest(
            f"'{key}' takes at most {max_items} sequences.", param=key, code="invalid_value"
        )
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _wrong(f"{key}[{index}]", "a string", item)
    return list(value) or None


METADATA_KEYS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512

# Request tags (docs/api.md, "Request tags"): what a usage record keeps of the caller's
# attribution, metadata only. From the x-megarouter-tags header (``feature=search,env=prod``),
# OpenAI's ``metadata`` and Anthropic's ``metadata.user_id`` (as ``user``). OpenAI's ``user``
# is not kept: it is free text the caller did not mark as metadata.
TAGS_HEADER = "x-megarouter-tags"
TAG_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]{0,62}[A-Za-z0-9])?")
TAGS_MAX = 16  # in the header; with metadata's 16, at most 32 on a record
TAG_VALUE_CHARS = 128  # longer metadata values are kept to their first 128 characters


def request_tags(headers: Mapping[str, str], metadata: Any) -> dict[str, str]:
    """The request's tags: ``metadata``'s (string values, cut to 128 characters), then the
    header's, which win. A bad header is a 400 naming it; the errors never repeat a tag (they
    are the caller's data)."""
    tags: dict[str, str] = {}
    if isinstance(metadata, Mapping):
        for name, value in metadata.items():
            if isinstance(name, str) and isinstance(value, str):
                tags[name[:METADATA_KEY_CHARS]] = value[:TAG_VALUE_CHARS]
    raw = headers.get(TAGS_HEADER)
    if raw is not None:
        tags.update(_header_tags(raw))
    return tags


def _header_tags(raw: str) -> dict[str, str]:
    def bad(problem: str) -> InvalidRequest:
        return InvalidRequest(
            f"Invalid '{TAGS_HEADER}' header: {problem}. Use key=value pairs separated by "
            f"commas (at most {TAGS_MAX}; keys of letters, digits, '_', '.', ':' or '-' up to "
            f"64 characters; values up to {TAG_VALUE_CHARS} characters without commas).",
            param=TAGS_HEADER,
            code="invalid_tags",
        )

    pairs = [p.strip() for p in raw.split(",") if p.strip()]
    if len(pairs) > TAGS_MAX:
        raise bad(f"{len(pairs)} tags")
    tags: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not TAG_KEY.fullmatch(name) or "__" in name:
            raise bad("a key is missing or has other characters")
        if not value or len(value) > TAG_VALUE_CHARS or not value.isprintable():
            raise bad("a value is empty, too long or not printable")
        tags[name] = value
    return tags


def check_metadata(data: dict[str, Any], key: str = "metadata") -> dict[str, str] | None:
    """OpenAI's ``metadata``: at most 16 keys of up to 64 characters, each to a string of up
    to 512 characters. The errors name the field, never a key or value (they are the
    caller's data)."""
    value = get_dict(data, key)
    if value is None:
        return None
    if len(value) > METADATA_KEYS:
        raise InvalidRequest(
            f"Invalid '{key}': too many properties. Expected an object with at most "
            f"{METADATA_KEYS} properties, but got an object with {len(value)} properties.",
            param=key,
            code="object_above_max_properties",
        )
    for name, item in value.items():
        if len(name) > METADATA_KEY_CHARS:
            raise InvalidRequest(
                f"Invalid '{key}': a key is longer than {METADATA_KEY_CHARS} characters.",
                param=key,
                code="invalid_value",
            )
        if not isinstance(item, str):
            raise InvalidRequest(
                f"Invalid '{key}': every value must be a string, but one is {type_name(item)}.",
                param=key,
                code="invalid_type",
            )
        if len(item) > METADATA_VALUE_CHARS:
            raise InvalidRequest(
                f"Invalid '{key}': a value is longer than {METADATA_VALUE_CHARS} characters "
                f"({len(item)}).",
                param=key,
                code="string_above_max_length",
            )
    return value


def check_logit_bias(data: dict[str, Any], key: str = "logit_bias") -> dict[str, float] | None:
    """OpenAI's ``logit_bias``: a map from token ids (as strings) to a bias in [-100, 100]."""
    value = get_dict(data, key)
    if value is None:
        return None
    for token, bias in value.items():
        if not token.isascii() or not token.isdigit():
            raise InvalidRequest(
                f"Invalid '{key}': every key must be a token id (a string of digits).",
                param=key,
                code="invalid_value",
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise InvalidRequest(
                f"Invalid '{key}': every value must be a number, but one is {type_name(bias)}.",
                param=key,
                code="invalid_type",
            )
        if not -100 <= bias <= 100:
            raise InvalidRequest(
                f"Invalid '{key}': every bias must be between -100 and 100, but one is {bias}.",
                param=key,
                code="invalid_value",
            )
    return value


def reject_unknown(data: dict[str, Any], known: frozenset[str], prefix: str = "") -> None:
    for key in data:
        if key not in known:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {prefix}{key}",
                param=f"{prefix}{key}",
                code="unknown_parameter",
            )


def require_model(data: dict[str, Any]) -> str:
    model = require_str(data, "model")
    if not model.strip():
        raise InvalidRequest("'model' must not be empty.", param="model", code="invalid_value")
    return model


# ---------------------------------------------------------------- per-request routing override


def parse_override(data: dict[str, Any]) -> PolicySpec | None:
    """The optional ``"megarouter"`` body field: a routing policy document for this request
    (the fields and rules every policy level has, ``orgs.policy``), the nearest level."""
    raw = get_dict(data, "megarouter")
    if raw is None:
        return None
    reject_unknown(raw, frozenset(RULES), "megarouter.")
    try:
        spec = PolicySpec.from_document(raw)
    except PolicyError as error:
        name, message = next(iter(error.errors.items()))
        raise InvalidRequest(
            f"Invalid 'megarouter.{name}': {message}.",
            param=f"megarouter.{name}",
            code="invalid_value",
        ) from None
    return None if spec.is_empty() else spec


# ---------------------------------------------------------------- the parsed inbound request


@dataclass(slots=True)
class Inbound:
    """A parsed chat-shaped request, whatever its wire format, plus what routing needs."""

    model: str  # as the client wrote it: catalog id, bare name or routing alias
    chat: ChatRequest
    override: PolicySpec | None = None
    needs: set[str] = field(default_factory=set)  # capabilities, see CAP_*
    # Which parameter asked for each capability, so a refusal names it.
    needs_param: dict[str, str] = field(default_factory=dict)
    cache_breakpoints: int = 0  # Anthropic cache_control marks the request carries

    def need(self, capability: str, param: str) -> None:
        if capability not in self.needs:
            self.needs.add(capability)
            self.needs_param[capability] = param
