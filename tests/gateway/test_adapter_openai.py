"""OpenAI / Azure / OpenAI-compatible adapter: fixtures from the API reference, request
translation, embeddings and legacy completions against the simulator."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from gateway.providers.adapters import get_adapter
from gateway.providers.openai import OpenAIStreamDecoder, request_to_wire, response_from_wire
from gateway.providers.types import (
    ChatRequest,
    ContentPart,
    EmbeddingRequest,
    ErrorKind,
    Message,
    ProviderError,
    ResponseFormat,
    ToolCall,
)
from tests.gateway.conftest import fixture_bytes, fixture_json
from tests.gateway.factories import WEATHER_TOOL, EndpointFactory, fault

ERRORS = fixture_json("openai", "errors.json")


def test_response_fixture() -> None:
    response = response_from_wire(
        fixture_json("openai", "chat_completion.json"), fallback_model="x"
    )
    assert response.id == "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert response.model == "gpt-4.1-2025-04-14"
    assert response.created == 1741569952
    assert response.system_fingerprint == "fp_fc9f1d7035"
    choice = response.choices[0]
    assert choice.message.content == "Hello! How can I assist you today?"
    assert choice.finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (19, 10)
    assert response.usage.total_tokens == 29


def test_tool_call_fixture_and_cached_tokens() -> None:
    response = response_from_wire(
        fixture_json("openai", "chat_completion_tools.json"), fallback_model="x"
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls == [
        ToolCall(
            id="call_abc123", name="get_current_weather", arguments='{\n"location": "Boston, MA"\n}'
        )
    ]
    assert response.usage.cached_tokens == 64
    assert response.usage.prompt_tokens == 82


def test_deepseek_cache_hit_tokens() -> None:
    data = fixture_json("openai", "chat_completion.json")
    data["usage"] = {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 60,
                     "prompt_cache_miss_tokens": 40}  # fmt: skip
    assert response_from_wire(data, fallback_model="x").usage.cached_tokens == 60


@pytest.mark.parametrize("split", [1, 7, 64, 100_000])
def test_stream_fixture_any_split(split: int) -> None:
    raw = fixture_bytes("openai", "chat_stream.sse")
    decoder = OpenAIStreamDecoder("gpt-4o-mini")
    chunks = []
    for i in range(0, len(raw), split):
        chunks.extend(decoder.feed(raw[i : i + split]))
    assert decoder.done
    assert decoder.finish() == []
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 2)


def test_stream_tool_call_fixture() -> None:
    decoder = OpenAIStreamDecoder("gpt-4o")
    chunks = decoder.feed(fixture_bytes("openai", "chat_stream_tools.sse"))
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or ()]
    assert deltas[0].id == "call_DdmO9pD3xa9XTPNJ32zg2hcA" and deltas[0].name == "get_weather"
    assert "".join(d.arguments or "" for d in deltas) == '{"location":"Paris, France"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_without_done_is_protocol_error() -> None:
    raw = fixture_bytes("openai", "chat_stream.sse").replace(b"data: [DONE]\n\n", b"")
    decoder = OpenAIStreamDecoder("m")
    decoder.feed(raw)
    with pytest.raises(ProviderError) as info:
        decoder.finish()
    assert info.value.kind is ErrorKind.PROTOCOL


def test_error_event_mid_stream() -> None:
    decoder = OpenAIStreamDecoder("m")
    with pytest.raises(ProviderError) as info:
        decoder.feed(
            b'data: {"error": {"message": "overloaded", "type": "server_error", "code": "503"}}\n\n'
        )
    assert info.value.kind is ErrorKind.OVERLOADED


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_fixtures(name: str) -> None:
    case = ERRORS[name]
    adapter = get_adapter("azure" if name.startswith("azure") else "openai")
    error = adapter.parse_error(
        case["status"], httpx.Headers(case["headers"]), orjson.dumps(case["body"])
    )
    assert error.kind.value == case["kind"]
    assert error.status == case["status"]
    if case["retry_after"] == "future":
        assert error.retry_after is not None and error.retry_after > 86_400
    else:
        assert error.retry_after == case["retry_after"]


def test_request_translation() -> None:
    request = ChatRequest(
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content=[ContentPart(type="text", text="What is this?"),
                                          ContentPart(type="image", image_url="https://x/y.png", detail="low")]),
            Message(role="assistant", content=None,
                    tool_calls=[ToolCall(id="c1", name="get_weather", arguments='{"city":"Oslo"}')]),
            Message(role="tool", content="4C", tool_call_id="c1"),
        ],
        max_tokens=50, temperature=0.2, stop=["\n"], tools=[WEATHER_TOOL], tool_choice={"name": "get_weather"},
        response_format=ResponseFormat(type="json_schema", name="w", schema={"type": "object"}, strict=True),
        extra={"service_tier": "flex"},
    )  # fmt: skip
    body = request_to_wire(request, model="gpt-4o", stream=True)
    assert body["model"] == "gpt-4o"
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body
    assert body["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://x/y.png", "detail": "low"},
    }
    assert body["messages"][2]["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    assert body["messages"][3] == {"role": "tool", "content": "4C", "tool_call_id": "c1"}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
    }
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["service_tier"] == "flex"
    assert request_to_wire(request, model="o4-mini", stream=False)["max_completion_tokens"] == 50


def test_azure_url_and_headers() -> None:
    ep = EndpointFactory(
        kind="azure", url="https://res.openai.azure.com", model="prod gpt", api_version="2025-01-01"
    )
    url, headers, body = get_adapter("azure").build(
        ep, ChatRequest(messages=[Message(role="user", content="hi")]), stream=False
    )
    assert (
        url
        == "https://res.openai.azure.com/azure/openai/deployments/prod%20gpt/chat/completions?api-version=2025-01-01"
    )
    assert headers["api-key"] == "sim-test-key" and "authorization" not in headers
    assert "model" not in orjson.loads(body)


def test_compatible_provider_base_url() -> None:
    ep = EndpointFactory(
        kind="openai", base_url="https://api.deepseek.com/v1", model="deepseek-chat", api_key="sk-1"
    )
    url, headers, _ = get_adapter("openai").build(
        ep, ChatRequest(messages=[Message(role="user", content="hi")]), stream=True
    )
    assert url == "https://api.deepseek.com/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-1"
    assert headers["accept"] == "text/event-stream"


@pytest.mark.usefixtures("close_clients")
@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_embeddings(kind: str, simulator_url: str) -> None:
    adapter = get_adapter(kind)
    ep = EndpointFactory(kind=kind, url=simulator_url, model="text-embedding-3-small")
    response = await adapter.embed(
        ep, EmbeddingRequest(input=["hello world", "good bye"], dimensions=64)
    )
    assert [e.index for e in response.data] == [0, 1]
    assert all(len(e.vector) == 64 for e in response.data)
    assert abs(sum(v * v for v in response.data[0].vector) - 1.0) < 1e-4
    assert response.usage.prompt_tokens == 4
    again = await adapter.embed(
        ep, EmbeddingRequest(input=["hello world"], dimensions=64, encoding_format="base64")
    )
    assert again.data[0].vector == pytest.approx(response.data[0].vector, abs=1e-6)


@pytest.mark.usefixtures("close_clients")
async def test_embeddings_errors(simulator_url: str) -> None:
    ep = fault(
        EndpointFactory(kind="openai", url=simulator_url, model="text-embedding-3-small"),
        "fault=429~retry_after=4",
    )
    with pytest.raises(ProviderError) as info:
        await get_adapter("openai").embed(ep, EmbeddingRequest(input=["x"]))
    assert (info.value.kind, info.value.retry_after) == (ErrorKind.RATE_LIMITED, 4.0)


@pytest.mark.usefixtures("close_clients")
async def test_legacy_completions(simulator_url: str) -> None:
    adapter = get_adapter("openai")
    ep = EndpointFactory(kind="openai", url=simulator_url, model="gpt-3.5-turbo-instruct~tokens=5")
    text, finish, usage = await adapter.complete_text(
        ep, prompt="Say this is a test", max_tokens=16
    )
    assert finish == "stop"
    assert usage.prompt_tokens == 5 + 3 and usage.completion_tokens == 5
    assert text.endswith(".")
    _text, finish, usage = await adapter.complete_text(
        ep, prompt="Say this is a test", max_tokens=2
    )
    assert (finish, usage.completion_tokens) == ("length", 2)


def test_retry_after_http_date_parsing() -> None:
    from gateway.providers.base import parse_retry_after

    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert 28.0 <= parse_retry_after({"retry-after": date}, now=now) <= 31.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
