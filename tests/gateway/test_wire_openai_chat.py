"""OpenAI Chat Completions wire parsing and rendering (no I/O)."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.providers.types import (
    ChatChunk,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    Message,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from gateway.wire.common import parse_json_object
from gateway.wire.openai_chat import parse_chat, render_chat, render_chunk
from orgs.policy import PolicySpec

JSON = "application/json"

BASE = {"model": "openai/gpt-5", "messages": [{"role": "user", "content": "hi"}]}


def body(**changes):
    data = {**BASE, **changes}
    return {k: v for k, v in data.items() if v is not ...}


def error_of(data) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_chat(data)
    return info.value


def test_minimal_request():
    inbound = parse_chat(body())
    assert inbound.model == "openai/gpt-5"
    assert inbound.chat.messages[0].role == "user"
    assert inbound.chat.messages[0].content == "hi"
    assert inbound.chat.stream is False
    assert inbound.chat.n == 1
    assert inbound.needs == set()
    assert inbound.override is None


def test_full_passthrough_fields():
    inbound = parse_chat(
        body(
            temperature=0.5,
            top_p=0.9,
            stop="END",
            seed=7,
            n=2,
            max_tokens=10,
            max_completion_tokens=20,
            logprobs=True,
            top_logprobs=3,
            user="u-1",
            stream=True,
            stream_options={"include_usage": True},
            presence_penalty=0.1,
            reasoning_effort="low",
            parallel_tool_calls=False,
        )
    )
    chat = inbound.chat
    assert (chat.temperature, chat.top_p, chat.stop, chat.seed, chat.n) == (0.5, 0.9, ["END"], 7, 2)
    assert chat.max_tokens == 20  # max_completion_tokens wins
    assert (chat.logprobs, chat.top_logprobs, chat.user) == (True, 3, "u-1")
    assert chat.stream is True and chat.include_usage is True
    assert chat.extra == {"presence_penalty": 0.1}
    assert chat.reasoning_effort == "low"
    assert chat.parallel_tool_calls is False
    assert inbound.needs == {"reasoning"}


def test_image_parts_need_vision():
    inbound = parse_chat(
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/y.png", "detail": "low"},
                        },
                    ],
                }
            ]
        )
    )
    parts = inbound.chat.messages[0].content
    assert [p.type for p in parts] == ["text", "image"]
    assert parts[1].image_url == "https://x/y.png" and parts[1].detail == "low"
    assert inbound.needs == {"vision"}
    assert inbound.needs_param["vision"] == "messages[0].content[1]"


def test_tool_round_trip_messages_and_json_schema():
    inbound = parse_chat(
        body(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "w", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            tools=[
                {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
            ],
            tool_choice={"type": "function", "function": {"name": "w"}},
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
            },
        )
    )
    chat = inbound.chat
    assert chat.messages[2].tool_calls == [ToolCall(id="call_1", name="w", arguments="{}")]
    assert chat.messages[3].tool_call_id == "call_1"
    assert chat.tools[0].name == "w" and chat.tools[0].parameters == {"type": "object"}
    assert chat.tool_choice == {"name": "w"}
    assert chat.response_format.type == "json_schema"
    assert chat.response_format.name == "out" and chat.response_format.strict is True
    assert inbound.needs == {"tools", "json_schema"}


@pytest.mark.parametrize(
    ("changes", "param", "fragment"),
    [
        ({"messages": []}, "messages", "at least one message"),
        ({"messages": ...}, "messages", "Missing required parameter"),
        ({"messages": "hi"}, "messages", "expected an array, but got string"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "is not one of"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "Missing required"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "Missing required"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "got number"),
        ({"max_tokens": -1}, "max_tokens", "less than the minimum of 1"),
        ({"max_tokens": "10"}, "max_tokens", "expected an integer, but got string"),
        ({"temperature": 3}, "temperature", "greater than the maximum of 2"),
        ({"temperature": True}, "temperature", "expected a number, but got boolean"),
        ({"n": 0}, "n", "less than the minimum"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"model": ...}, "model", "Missing required parameter"),
        ({"model": 5}, "model", "expected a string"),
        ({"model": " "}, "model", "must not be empty"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when"),
        ({"tool_choice": "auto"}, "tool_choice", "only allowed when 'tools'"),
        ({"top_logprobs": 2}, "top_logprobs", "requires 'logprobs'"),
        ({"bogus_field": 1}, "bogus_field", "Unrecognized request argument"),
        ({"megarouter": {"strategy": "fastest"}}, "megarouter.strategy", "must be one of"),
        (
            {"megarouter": {"max_cost_per_request_usd": -1}},
            "megarouter.max_cost_per_request_usd",
            "positive",
        ),
        ({"megarouter": {"allowed_models": "x"}}, "megarouter.allowed_models", "list of strings"),
        ({"megarouter": {"colour": "red"}}, "megarouter.colour", "Unrecognized"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "Missing"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "expected one of"),
    ],
)
def test_bad_input_names_the_parameter(changes, param, fragment):
    error = error_of(body(**changes))
    assert error.status == 400
    assert error.param == param
    assert fragment in error.message
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_unsupported_content_part_and_store():
    data = body(
        messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    )
    with pytest.raises(UnsupportedParameter) as info:
        parse_chat(data)
    assert info.value.param == "messages[0].content[0].type"
    with pytest.raises(UnsupportedParameter) as info:
        parse_chat(body(store=True))
    assert info.value.param == "store"


def test_override_parsed_with_decimal_cost():
    inbound = parse_chat(
        body(
            model="auto",
            megarouter={
                "strategy": "cost",
                "allowed_models": ["openai/gpt-5-mini", "anthropic/claude-haiku-4-5"],
                "fallbacks": ["openai/gpt-4o-mini"],
                "max_cost_per_request_usd": 0.01,
                "max_latency_ms": 1500,
                "allowed_regions": ["eu"],
                "reference_model": "anthropic/claude-sonnet-4-6",
            },
        )
    )
    assert inbound.override == PolicySpec(
        strategy="cost",
        allowed_models=("openai/gpt-5-mini", "anthropic/claude-haiku-4-5"),
        fallbacks=("openai/gpt-4o-mini",),
        max_cost_per_request_usd=Decimal("0.01"),
        max_latency_ms=1500,
        allowed_regions=("eu",),
        reference_model="anthropic/claude-sonnet-4-6",
    )
    # empty lists mean "not set", as at every policy level
    assert parse_chat(body(model="auto", megarouter={"allowed_models": []})).override is None
    for bad in (42, " ", "x" * 256):
        with pytest.raises(InvalidRequest) as info:
            parse_chat(body(model="auto", megarouter={"reference_model": bad}))
        assert info.value.param == "megarouter.reference_model"


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"", "invalid_json", "empty"),
        (b"{not json", "invalid_json", "not valid JSON (line 1, column 2)"),
        (b"[1, 2]", "invalid_json", "must be a JSON object"),
        (b'{"model": "\xff\xfe"}', "invalid_encoding", "not valid UTF-8"),
    ],
)
def test_body_decoding_errors(raw, code, fragment):
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(raw, JSON)
    assert info.value.code == code
    assert fragment in info.value.message


def test_render_chat_uses_canonical_model_and_full_usage():
    response = ChatResponse(
        id="chatcmpl-1",
        model="gpt-5-2025",
        created=1700000000,
        choices=[
            Choice(
                index=0,
                message=Message(
                    role="assistant",
                    content=None,
                    tool_calls=[ToolCall(id="c1", name="w", arguments='{"a":1}')],
                ),
                finish_reason="tool_calls",
            )
        ],
        usage=Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=2, reasoning_tokens=1),
    )
    assert render_chat(response, "openai/gpt-5") == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "openai/gpt-5",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"a":1}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }


def test_render_chunk_with_and_without_usage():
    chunk = ChatChunk(
        id="c",
        model="x",
        created=1,
        choices=[
            ChunkChoice(
                index=0,
                delta=Delta(tool_calls=[ToolCallDelta(index=0, id="t", name="w", arguments="{")]),
            )
        ],
    )
    rendered = render_chunk(chunk, "openai/gpt-5", include_usage=True)
    assert rendered["usage"] is None
    assert rendered["choices"][0]["delta"] == {
        "tool_calls": [
            {"index": 0, "id": "t", "type": "function", "function": {"name": "w", "arguments": "{"}}
        ]
    }
    assert "usage" not in render_chunk(chunk, "openai/gpt-5", include_usage=False)
    assert orjson.loads(orjson.dumps(rendered))["model"] == "openai/gpt-5"
