"""Anthropic Messages adapter: fixtures from the API reference and request translation."""

from __future__ import annotations

import httpx
import orjson
import pytest

from gateway.providers.adapters import get_adapter
from gateway.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamDecoder,
    request_to_wire,
    response_from_wire,
)
from gateway.providers.types import (
    ChatRequest,
    ContentPart,
    ErrorKind,
    Message,
    ProviderError,
    ToolCall,
)
from tests.gateway.conftest import fixture_bytes, fixture_json
from tests.gateway.factories import WEATHER_TOOL, EndpointFactory

ERRORS = fixture_json("anthropic", "errors.json")


def test_message_fixture_usage_includes_cache_tokens() -> None:
    response = response_from_wire(fixture_json("anthropic", "message.json"), "x")
    assert response.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert response.model == "claude-sonnet-4-20250514"
    assert response.choices[0].message.content == "Hi! My name is Claude."
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens == 2095 + 2051 + 1000
    assert (usage.cached_tokens, usage.cache_write_tokens) == (1000, 2051)
    assert usage.completion_tokens == 503


def test_tool_use_fixture() -> None:
    response = response_from_wire(fixture_json("anthropic", "message_tool_use.json"), "x")
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check the current weather in San Francisco for you."
    assert choice.message.tool_calls == [
        ToolCall(
            id="toolu_01A09q90qw90lq917835lq9",
            name="get_weather",
            arguments='{"location":"San Francisco, CA","unit":"celsius"}',
        )
    ]


@pytest.mark.parametrize(
    ("stop", "finish"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"),
     ("tool_use", "tool_calls"), ("refusal", "content_filter")],
)  # fmt: skip
def test_stop_reasons(stop: str, finish: str) -> None:
    data = fixture_json("anthropic", "message.json") | {"stop_reason": stop}
    assert response_from_wire(data, "x").choices[0].finish_reason == finish


@pytest.mark.parametrize("split", [1, 13, 100_000])
def test_stream_fixture(split: int) -> None:
    raw = fixture_bytes("anthropic", "stream.sse")
    decoder = AnthropicStreamDecoder("m")
    chunks = []
    for i in range(0, len(raw), split):
        chunks.extend(decoder.feed(raw[i : i + split]))
    assert decoder.done and decoder.finish() == []
    assert chunks[0].id == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (35, 10, 15)


def test_stream_tool_use_fixture() -> None:
    decoder = AnthropicStreamDecoder("m")
    chunks = decoder.feed(fixture_bytes("anthropic", "stream_tool_use.sse"))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Okay, let's check the weather."
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or ()]
    assert deltas[0].index == 0
    assert (deltas[0].id, deltas[0].name) == ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert orjson.loads("".join(d.arguments or "" for d in deltas)) == {
        "location": "San Francisco, CA"
    }
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 89


def test_stream_error_event_is_overloaded() -> None:
    decoder = AnthropicStreamDecoder("m")
    chunks = decoder.feed(fixture_bytes("anthropic", "stream_error.sse"))
    assert [c.choices[0].delta.role for c in chunks] == ["assistant"]  # relayed first
    error = decoder.pending_error
    assert error is not None
    assert error.kind is ErrorKind.OVERLOADED
    assert error.retriable


def test_stream_without_message_stop() -> None:
    raw = fixture_bytes("anthropic", "stream.sse")
    raw = raw[: raw.index(b"event: message_stop")]
    decoder = AnthropicStreamDecoder("m")
    decoder.feed(raw)
    with pytest.raises(ProviderError) as info:
        decoder.finish()
    assert info.value.kind is ErrorKind.PROTOCOL


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_fixtures(name: str) -> None:
    case = ERRORS[name]
    error = get_adapter("anthropic").parse_error(
        case["status"], httpx.Headers(case["headers"]), orjson.dumps(case["body"])
    )
    assert error.kind.value == case["kind"]
    assert error.retry_after == case["retry_after"]
    assert error.status == case["status"]


def test_request_translation() -> None:
    request = ChatRequest(
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="developer", content="Use metric units."),
            Message(role="user", content=[ContentPart(type="text", text="Weather?"),
                                          ContentPart(type="image", image_url="data:image/png;base64,AAAA")]),
            Message(role="assistant", content="Checking.",
                    tool_calls=[ToolCall(id="toolu_1", name="get_weather", arguments='{"city":"Oslo"}'),
                                ToolCall(id="toolu_2", name="get_weather", arguments='{"city":"Rome"}')]),
            Message(role="tool", content="4C", tool_call_id="toolu_1"),
            Message(role="tool", content="18C", tool_call_id="toolu_2"),
        ],
        tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False, stop=["END"], user="u-1",
        max_tokens=512,
    )  # fmt: skip
    body = request_to_wire(request, "claude-3-5-haiku", stream=True)
    assert body["system"] == "Be brief.\n\nUse metric units."
    assert body["max_tokens"] == 512
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    }  # fmt: skip
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "4C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "18C"},
    ]
    assert body["tools"][0]["input_schema"] == WEATHER_TOOL.parameters
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["stream"] is True


def test_max_tokens_is_always_sent() -> None:
    request = ChatRequest(messages=[Message(role="user", content="hi")])
    assert request_to_wire(request, "m", stream=False)["max_tokens"] == DEFAULT_MAX_TOKENS
    request.max_tokens = 77
    assert request_to_wire(request, "m", stream=False)["max_tokens"] == 77


def test_headers_and_url() -> None:
    ep = EndpointFactory(kind="anthropic", base_url="https://api.anthropic.com", api_key="sk-ant")
    url, headers, _ = get_adapter("anthropic").build(
        ep, ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=9), stream=False
    )
    assert url == "https://api.anthropic.com/v1/messages"
    assert headers["x-api-key"] == "sk-ant"
    assert headers["anthropic-version"] == "2023-06-01"


def test_invalid_tool_arguments_are_bad_request() -> None:
    request = ChatRequest(
        messages=[Message(role="assistant", content=None,
                          tool_calls=[ToolCall(id="t", name="f", arguments="{not json")])]
    )  # fmt: skip
    with pytest.raises(ProviderError) as info:
        request_to_wire(request, "m", stream=False)
    assert info.value.kind is ErrorKind.BAD_REQUEST


def test_tool_choice_none_keeps_tool_definitions() -> None:
    """History with tool_use blocks needs the tools defined, even when no call is wanted."""
    request = ChatRequest(
        messages=[Message(role="user", content="hi")],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=9,
    )
    body = request_to_wire(request, "m", stream=False)
    assert [t["name"] for t in body["tools"]] == ["get_weather"]
    assert body["tool_choice"] == {"type": "none"}


def test_count_tokens_sends_the_prompt_fields_only() -> None:
    adapter = get_adapter("anthropic")
    endpoint = EndpointFactory(kind="anthropic", base_url="https://api.anthropic.com", model="m")
    request = ChatRequest(
        messages=[Message(role="system", content="Be brief"), Message(role="user", content="Hi")],
        max_tokens=100,
        temperature=0.5,
        tools=[WEATHER_TOOL],
    )
    url, headers, body = adapter.build_count_tokens(endpoint, request)
    assert url == "https://api.anthropic.com/v1/messages/count_tokens"
    assert headers["anthropic-version"] and headers["content-type"] == "application/json"
    sent = orjson.loads(body)
    # Anthropic's count_tokens takes model, messages, system, tools, tool_choice, thinking
    assert set(sent) == {"model", "messages", "system", "tools"}
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert adapter.supports_count_tokens and not get_adapter("openai").supports_count_tokens


def test_system_blocks_keep_each_breakpoint_where_the_client_put_it():
    """Two marked system blocks (a stable preamble and a per-project part, as some coding
    agents send): both breakpoints reach Anthropic, and Bedrock gets a cache point after each."""
    from gateway.providers import bedrock
    from gateway.providers.anthropic import request_to_wire
    from gateway.wire.anthropic import parse_messages

    mark = {"type": "ephemeral"}
    system = [
        {"type": "text", "text": "You are a coding agent.", "cache_control": mark},
        {"type": "text", "text": "Project rules: run the tests."},
        {"type": "text", "text": "Repository map: ...", "cache_control": mark},
    ]
    inbound = parse_messages(
        {
            "model": "anthropic/claude-sonnet-4",
            "max_tokens": 64,
            "system": system,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    body = request_to_wire(inbound.chat, "claude-sonnet-4", stream=False)
    assert body["system"] == system
    converse = bedrock.request_to_wire(inbound.chat)
    assert converse["system"] == [
        {"text": "You are a coding agent."},
        {"cachePoint": {"type": "default"}},
        {"text": "Project rules: run the tests."},
        {"text": "Repository map: ..."},
        {"cachePoint": {"type": "default"}},
    ]
    unmarked = parse_messages(
        {
            "model": "anthropic/claude-sonnet-4",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    assert request_to_wire(unmarked.chat, "claude-sonnet-4", stream=False)["system"] == "ab"
