"""Property-based fuzzing of the /v1 request parsers (gateway/wire): whatever the body, a
parser either returns or raises a GatewayError with a 4xx status (never another exception,
which the server would answer with a 500), its message stays short and never quotes the
input, and it allocates a bounded amount of memory. Pure functions: no server, fast."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.wire.anthropic import parse_messages
from gateway.wire.common import parse_json_object
from gateway.wire.completions import parse_completion
from gateway.wire.embeddings import parse_embeddings
from gateway.wire.openai_chat import parse_chat
from gateway.wire.responses import parse_responses

JSON = "application/json"

CANARY = "qq-canary-77"
PARSERS = {
    "chat": parse_chat,
    "completions": parse_completion,
    "embeddings": parse_embeddings,
    "responses": parse_responses,
    "messages": parse_messages,
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.just(CANARY),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "bogus", 7, None])
content = st.one_of(
    st.just(CANARY),
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "input_audio", "file", 3])},
            optional={
                "text": st.one_of(st.just(CANARY), json_values),
                "image_url": st.one_of(
                    st.fixed_dictionaries(
                        {"url": st.sampled_from(["data:image/png;base64,AAAA", "ftp://x", ""])}
                    ),
                    json_values,
                ),
            },
        ),
        max_size=3,
    ),
    json_values,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles, "content": content},
        optional={"name": json_values, "tool_calls": json_values},
    ),
    max_size=4,
)
# Near-valid requests (valid shapes with fields mutated), where parser bugs hide.
requests = st.fixed_dictionaries(
    {"model": st.one_of(st.just("openai/gpt-4o-mini"), json_values)},
    optional={
        "messages": st.one_of(messages, json_values),
        "prompt": st.one_of(st.just(CANARY), json_values),
        "input": st.one_of(
            st.just(CANARY), st.lists(st.just(CANARY), max_size=3), json_values, messages
        ),
        "max_tokens": st.one_of(st.integers(min_value=-5, max_value=2**40), json_values),
        "stream": json_values,
        "stream_options": json_values,
        "temperature": json_values,
        "top_p": json_values,
        "stop": json_values,
        "n": json_values,
        "tools": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["function", "web_search", 1])},
                    optional={
                        "function": json_values,
                        "name": json_values,
                        "input_schema": json_values,
                    },
                ),
                max_size=2,
            ),
            json_values,
        ),
        "tool_choice": json_values,
        "response_format": json_values,
        "text": json_values,
        "system": st.one_of(st.just(CANARY), json_values),
        "megarouter": json_values,
        "dimensions": json_values,
        "encoding_format": json_values,
        "unknown_field": json_values,
    },
)


def _check(parser: Any, data: Any) -> None:
    try:
        parser(data)
    except GatewayError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc)
        assert CANARY not in str(exc)
        assert len(str(exc)) <= 1000


@FUZZ
@given(data=requests, name=st.sampled_from(sorted(PARSERS)))
def test_parsers_refuse_with_4xx_only(data: dict[str, Any], name: str) -> None:
    _check(PARSERS[name], data)


@FUZZ
@given(data=json_values, name=st.sampled_from(sorted(PARSERS)))
def test_parsers_take_any_json_object(data: Any, name: str) -> None:
    if isinstance(data, dict):
        _check(PARSERS[name], data)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # integers beyond 64 bits: sent as text instead
        return str(value).encode()


@FUZZ
@given(body=st.binary(max_size=300) | json_values.map(_dumps))
def test_body_decoding_refuses_with_400(body: bytes) -> None:
    try:
        parsed = parse_json_object(body, JSON)
    except GatewayError as exc:
        assert exc.status == 400
        assert exc.code in ("invalid_json", "invalid_encoding")
    else:
        assert isinstance(parsed, dict)


def test_deep_nesting_and_wide_bodies_stay_bounded() -> None:
    """A body nested 100,000 levels deep, and one with 50,000 messages: 400 or a parse,
    never a crash, and memory bounded by a small multiple of the body."""
    deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    try:
        parse_json_object(deep, JSON)
    except GatewayError as exc:
        assert exc.status == 400
    wide = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 10}] * 50_000}
    )
    tracemalloc.start()
    try:
        data = parse_json_object(wide, JSON)
        for parser in PARSERS.values():
            _check(parser, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * len(wide) + 5_000_000
