"""Gemini adapter: fixtures from the API reference and request translation."""

from __future__ import annotations

import httpx
import orjson
import pytest

from gateway.providers.adapters import get_adapter
from gateway.providers.gemini import GeminiStreamDecoder, request_to_wire, response_from_wire
from gateway.providers.types import (
    ChatRequest,
    EmbeddingRequest,
    ErrorKind,
    Message,
    ProviderError,
    ResponseFormat,
    ToolCall,
)
from tests.gateway.conftest import fixture_bytes, fixture_json
from tests.gateway.factories import WEATHER_TOOL, EndpointFactory

ERRORS = fixture_json("gemini", "errors.json")


def test_generate_content_fixture_usage() -> None:
    response = response_from_wire(fixture_json("gemini", "generate_content.json"), "x")
    assert response.id == "9k3WaKLgBKWvnvgPq9XUsA4"
    assert response.model == "gemini-2.5-flash"
    assert response.choices[0].message.content == "AI learns patterns from data."
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert (usage.prompt_tokens, usage.cached_tokens) == (8, 4)
    assert (usage.completion_tokens, usage.reasoning_tokens) == (6 + 1020, 1020)


def test_function_call_fixture() -> None:
    response = response_from_wire(fixture_json("gemini", "function_call.json"), "x")
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.name == "set_light_values"
    assert orjson.loads(call.arguments) == {"brightness": 25, "color_temp": "warm"}
    assert call.id.startswith("call_") and len(call.id) == 29


def test_prompt_block_is_content_filter_error() -> None:
    with pytest.raises(ProviderError) as info:
        response_from_wire(fixture_json("gemini", "blocked.json"), "x")
    assert info.value.kind is ErrorKind.CONTENT_FILTER
    assert info.value.provider_code == "SAFETY"
    assert not info.value.retriable


def test_safety_finish_reason() -> None:
    response = response_from_wire(fixture_json("gemini", "safety_finish.json"), "x")
    assert response.choices[0].finish_reason == "content_filter"
    assert response.choices[0].message.content == "I can tell you that"


def test_stream_fixture() -> None:
    decoder = GeminiStreamDecoder("m")
    raw = fixture_bytes("gemini", "stream.sse")
    chunks = []
    for i in range(0, len(raw), 17):
        chunks.extend(decoder.feed(raw[i : i + 17]))
    chunks.extend(decoder.finish())
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The sky is blue."
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 5)


def test_stream_without_finish_reason_is_protocol_error() -> None:
    raw = fixture_bytes("gemini", "stream.sse")
    decoder = GeminiStreamDecoder("m")
    decoder.feed(raw[: raw.rindex(b"data:")])
    with pytest.raises(ProviderError) as info:
        decoder.finish()
    assert info.value.kind is ErrorKind.PROTOCOL


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_fixtures(name: str) -> None:
    case = ERRORS[name]
    error = get_adapter("gemini").parse_error(
        case["status"], httpx.Headers(case["headers"]), orjson.dumps(case["body"])
    )
    assert error.kind.value == case["kind"]
    assert error.retry_after == case["retry_after"]


def test_request_translation() -> None:
    request = ChatRequest(
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="Weather in Oslo?"),
            Message(role="assistant", content=None,
                    tool_calls=[ToolCall(id="c1", name="get_weather", arguments='{"city":"Oslo"}')]),
            Message(role="tool", content='{"temp": 4}', tool_call_id="c1"),
        ],
        max_tokens=100, temperature=0.1, stop=["END"], tools=[WEATHER_TOOL], tool_choice={"name": "get_weather"},
        response_format=ResponseFormat(type="json_schema", schema={"type": "object", "additionalProperties": False,
                                                                   "properties": {"a": {"type": "string"}}}),
    )  # fmt: skip
    body = request_to_wire(request)
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 4}}}],
        },
    ]
    assert body["generationConfig"] == {
        "maxOutputTokens": 100, "temperature": 0.1, "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }  # fmt: skip
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather"
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }


def test_url_and_auth_header() -> None:
    ep = EndpointFactory(
        kind="gemini", base_url="https://generativelanguage.googleapis.com", api_key="AIza"
    )
    adapter = get_adapter("gemini")
    request = ChatRequest(messages=[Message(role="user", content="hi")])
    url, headers, _ = adapter.build(ep, request, stream=True)
    assert url == (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-2.0-flash:streamGenerateContent?alt=sse"
    )
    assert headers["x-goog-api-key"] == "AIza"
    url, _, _ = adapter.build(ep, request, stream=False)
    assert url.endswith("/v1beta/models/gemini-2.0-flash:generateContent")


def test_tool_choice_none_is_mode_none() -> None:
    request = ChatRequest(
        messages=[Message(role="user", content="hi")], tools=[WEATHER_TOOL], tool_choice="none"
    )
    body = request_to_wire(request)
    assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}


def test_embedding_request_is_googles_batch_embed_contents() -> None:
    ep = EndpointFactory(kind="gemini", url="https://g.example", model="gemini-embedding-001")
    url, headers, body = get_adapter("gemini").build_embedding(
        ep, EmbeddingRequest(input=["alpha", "beta"], dimensions=768)
    )
    assert url == "https://g.example/gemini/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert headers["x-goog-api-key"] == "sim-test-key"
    part = {"model": "models/gemini-embedding-001", "outputDimensionality": 768}
    assert orjson.loads(body) == {
        "requests": [
            {**part, "content": {"parts": [{"text": "alpha"}]}},
            {**part, "content": {"parts": [{"text": "beta"}]}},
        ]
    }


def test_token_array_input_is_unsupported_not_a_bad_request() -> None:
    ep = EndpointFactory(kind="gemini", model="gemini-embedding-001")
    with pytest.raises(ProviderError) as info:
        get_adapter("gemini").build_embedding(ep, EmbeddingRequest(input=[[1, 2, 3]]))
    assert info.value.kind is ErrorKind.UNSUPPORTED  # another model may take token arrays


@pytest.mark.usefixtures("close_clients")
async def test_embeddings_against_the_simulator(simulator_url: str) -> None:
    adapter = get_adapter("gemini")
    ep = EndpointFactory(kind="gemini", url=simulator_url, model="gemini-embedding-001")
    response = await adapter.embed(ep, EmbeddingRequest(input=["hello", "world"], dimensions=32))
    assert [e.index for e in response.data] == [0, 1]
    assert all(len(e.vector) == 32 for e in response.data)
    assert response.usage.prompt_tokens == 0  # Gemini counts none: the pipeline estimates
    # 250 inputs: three calls of at most 100 (Google's limit), joined in order
    texts = [f"text {i}" for i in range(250)]
    many = await adapter.embed(ep, EmbeddingRequest(input=texts, dimensions=8))
    assert [e.index for e in many.data] == list(range(250))
    single = await adapter.embed(ep, EmbeddingRequest(input=["text 217"], dimensions=8))
    assert many.data[217].vector == single.data[0].vector
    with pytest.raises(ProviderError) as info:  # past the model's 3,072 dimensions
        await adapter.embed(ep, EmbeddingRequest(input=["x"], dimensions=4000))
    assert info.value.kind is ErrorKind.BAD_REQUEST
