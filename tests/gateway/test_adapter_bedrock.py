"""Bedrock Converse adapter: SigV4 against AWS's test suite, the event stream codec, fixtures
and request translation."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from gateway.providers import sigv4
from gateway.providers.adapters import get_adapter
from gateway.providers.bedrock import BedrockStreamDecoder, request_to_wire, response_from_wire
from gateway.providers.eventstream import EventStreamDecoder, EventStreamError, encode_message
from gateway.providers.types import ChatRequest, ErrorKind, Message, ProviderError, ToolCall
from gateway.simulator.bedrock import exception_frame
from tests.gateway.conftest import fixture_json
from tests.gateway.factories import WEATHER_TOOL, EndpointFactory

VECTORS = fixture_json("sigv4", "vectors.json")
ERRORS = fixture_json("bedrock", "errors.json")


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_sigv4_test_suite(case: dict) -> None:
    signed = sigv4.sign(
        method=case["method"],
        url=case["url"],
        headers=case["headers"],
        body=case["body"].encode(),
        access_key=VECTORS["credentials"]["access_key"],
        secret_key=VECTORS["credentials"]["secret_key"],
        region=VECTORS["region"],
        service=VECTORS["service"],
        session_token=case.get("session_token"),
        now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC),
    )
    assert signed["authorization"] == case["authorization"]
    assert signed["x-amz-date"] == VECTORS["date"]


def test_sigv4_canonical_uri_double_encodes_model_ids() -> None:
    creq, signed = sigv4.canonical_request(
        "POST",
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-v2%3A1/converse",
        {"host": "bedrock-runtime.us-east-1.amazonaws.com", "x-amz-date": "20240101T000000Z"},
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    )
    assert creq.splitlines()[1] == "/model/anthropic.claude-v2%253A1/converse"
    assert signed == "host;x-amz-date"


def test_adapter_signs_requests() -> None:
    adapter = get_adapter("bedrock")
    ep = EndpointFactory(kind="bedrock", base_url="https://bedrock-runtime.eu-west-1.amazonaws.com",
                         region="eu-west-1", aws_session_token="tok")  # fmt: skip
    url, headers, body = adapter.build(
        ep, ChatRequest(messages=[Message(role="user", content="hi")]), stream=False
    )
    assert (
        url
        == "https://bedrock-runtime.eu-west-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    )
    signed = adapter.sign(ep, "POST", url, headers, body)
    assert signed["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert (
        "/eu-west-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token, Signature="
        in signed["authorization"]
    )
    assert signed["x-amz-security-token"] == "tok"


def test_eventstream_round_trip_and_crc() -> None:
    frames = encode_message(
        {":event-type": "a", ":message-type": "event"}, b'{"x":1}'
    ) + encode_message({":event-type": "b"}, b"")
    decoder = EventStreamDecoder()
    out = []
    for i in range(0, len(frames), 5):
        out.extend(decoder.feed(frames[i : i + 5]))
    assert out == [
        ({":event-type": "a", ":message-type": "event"}, b'{"x":1}'),
        ({":event-type": "b"}, b""),
    ]
    assert not decoder.pending()
    broken = bytearray(frames)
    broken[20] ^= 1
    with pytest.raises(EventStreamError, match="message CRC"):
        EventStreamDecoder().feed(bytes(broken))
    bad_prelude = bytearray(frames)
    bad_prelude[9] ^= 1
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(bad_prelude))
    # Known-answer check of the framing: total length and the prelude CRC32.
    single = encode_message({}, b"")
    assert single[:8] == b"\x00\x00\x00\x10\x00\x00\x00\x00"
    assert int.from_bytes(single[8:12], "big") == zlib.crc32(single[:8])


def test_converse_fixture_usage() -> None:
    response = response_from_wire(fixture_json("bedrock", "converse.json"), "m")
    assert response.choices[0].message.content == "Hello! How can I help you today?"
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens) == (132, 100, 20)
    assert usage.completion_tokens == 10


def test_converse_tool_use_fixture() -> None:
    response = response_from_wire(fixture_json("bedrock", "converse_tool_use.json"), "m")
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll look up the most popular song."
    assert choice.message.tool_calls == [
        ToolCall(id="tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", name="top_song", arguments='{"sign":"WZPZ"}')
    ]


def _event(kind: str, payload: dict) -> bytes:
    return encode_message({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                          orjson.dumps(payload))  # fmt: skip


def test_converse_stream_events() -> None:
    raw = b"".join([
        _event("messageStart", {"role": "assistant"}),
        _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        _event("contentBlockStop", {"contentBlockIndex": 0}),
        _event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}),
        _event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a":'}}}),
        _event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
        _event("messageStop", {"stopReason": "tool_use"}),
        _event("metadata", {"usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}, "metrics": {"latencyMs": 9}}),
    ])  # fmt: skip
    decoder = BedrockStreamDecoder("m")
    chunks = decoder.feed(raw)
    assert decoder.done and decoder.finish() == []
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or ()]
    assert (deltas[0].index, deltas[0].id, deltas[0].name) == (0, "t1", "f")
    assert "".join(d.arguments or "" for d in deltas) == '{"a":1}'
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 12


@pytest.mark.parametrize(
    ("exception", "kind"),
    [("throttlingException", ErrorKind.RATE_LIMITED), ("modelStreamErrorException", ErrorKind.SERVER_ERROR),
     ("serviceUnavailableException", ErrorKind.OVERLOADED), ("validationException", ErrorKind.SERVER_ERROR),
     ("internalServerException", ErrorKind.SERVER_ERROR)],
)  # fmt: skip
def test_converse_stream_exceptions(exception: str, kind: ErrorKind) -> None:
    decoder = BedrockStreamDecoder("m")
    # The role chunk before the exception is still relayed; the error is raised after it.
    chunks = decoder.feed(
        _event("messageStart", {"role": "assistant"}) + exception_frame(exception, "boom")
    )
    assert [c.choices[0].delta.role for c in chunks] == ["assistant"]
    assert decoder.pending_error is not None
    assert decoder.pending_error.kind is kind
    assert decoder.pending_error.message == "boom"
    with pytest.raises(ProviderError) as info:  # alone, the exception raises at once
        BedrockStreamDecoder("m").feed(exception_frame(exception, "boom"))
    assert info.value.kind is kind


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_fixtures(name: str) -> None:
    case = ERRORS[name]
    error = get_adapter("bedrock").parse_error(
        case["status"], httpx.Headers(case["headers"]), orjson.dumps(case["body"])
    )
    assert error.kind.value == case["kind"]
    assert error.status == case["status"]


def test_request_translation() -> None:
    request = ChatRequest(
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="Weather?"),
            Message(role="assistant", content=None,
                    tool_calls=[ToolCall(id="t1", name="get_weather", arguments='{"city":"Oslo"}')]),
            Message(role="tool", content='{"temp": 4}', tool_call_id="t1"),
        ],
        max_tokens=64, temperature=0.3, top_p=0.9, stop=["END"], tools=[WEATHER_TOOL], tool_choice="auto",
    )  # fmt: skip
    body = request_to_wire(request)
    assert body["system"] == [{"text": "Be brief."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "Weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Oslo"}}}
            ],
        },
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"temp": 4}}]}}],
        },
    ]
    assert body["inferenceConfig"] == {
        "maxTokens": 64,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {
        "json": WEATHER_TOOL.parameters
    }
    assert body["toolConfig"]["toolChoice"] == {"auto": {}}


def test_tool_choice_none() -> None:
    plain = ChatRequest(
        messages=[Message(role="user", content="hi")], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert "toolConfig" not in request_to_wire(plain)
    with_history = ChatRequest(
        messages=[
            Message(role="user", content="hi"),
            Message(role="assistant", content=None,
                    tool_calls=[ToolCall(id="t1", name="get_weather", arguments="{}")]),
            Message(role="tool", content="ok", tool_call_id="t1"),
        ],
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )  # fmt: skip
    config = request_to_wire(with_history)["toolConfig"]
    assert [t["toolSpec"]["name"] for t in config["tools"]] == ["get_weather"]
    assert "toolChoice" not in config
