"""Legacy completions, embeddings, Responses API and Anthropic Messages wire formats (no I/O).
Rendered OpenAI objects are validated against the vendored OpenAI schemas."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest

from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.providers.anthropic import request_to_wire as anthropic_wire
from gateway.providers.bedrock import CACHE_POINT
from gateway.providers.bedrock import request_to_wire as bedrock_wire
from gateway.providers.types import (
    ChatChunk,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    Embedding,
    EmbeddingResponse,
    Message,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from gateway.wire.anthropic import MessagesStream, parse_messages, render_message
from gateway.wire.completions import parse_completion, render_completion, render_completion_chunk
from gateway.wire.embeddings import parse_embeddings, render_embeddings
from gateway.wire.responses import (
    ResponseShell,
    ResponsesStream,
    parse_responses,
    render_response,
)
from tests.gateway.schema_check import validate


def chat_response(text="hello", calls=None, finish="stop"):
    return ChatResponse(
        id="up-1",
        model="gpt-x",
        created=1700000000,
        choices=[
            Choice(
                index=0,
                message=Message(role="assistant", content=text, tool_calls=calls),
                finish_reason=finish,
            )
        ],
        usage=Usage(prompt_tokens=12, completion_tokens=3, cached_tokens=4),
    )


def chunk(content=None, calls=None, finish=None, usage=None, choices=True):
    return ChatChunk(
        id="up-1",
        model="gpt-x",
        created=1700000000,
        choices=[
            ChunkChoice(
                index=0, delta=Delta(content=content, tool_calls=calls), finish_reason=finish
            )
        ]
        if choices
        else [],
        usage=usage,
    )


RESPONSE_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}


def sse_events(raw: list[bytes]) -> list[tuple[str, dict]]:
    out = []
    for event in raw:
        head, data = event.split(b"\ndata: ")
        out.append((head.removeprefix(b"event: ").decode(), orjson.loads(data)))
    return out


# ---------------------------------------------------------------- legacy completions


def test_completion_parse_defaults_and_render():
    inbound = parse_completion({"model": "m", "prompt": ["Say hi"]})
    assert inbound.chat.messages[0].content == "Say hi"
    assert inbound.chat.max_tokens == 16
    body = render_completion(chat_response(), "openai/gpt-5")
    validate("CreateCompletionResponse", body)
    assert body["id"] == "cmpl-up-1"
    assert body["choices"] == [
        {"index": 0, "text": "hello", "logprobs": None, "finish_reason": "stop"}
    ]
    streamed = render_completion_chunk(chunk(content="he"), "openai/gpt-5", include_usage=False)
    # The schema declares finish_reason non-null, but OpenAI streams null until the last chunk;
    # the gateway follows the wire, so this chunk is checked exactly instead.
    assert streamed == {
        "id": "cmpl-up-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "openai/gpt-5",
        "choices": [{"index": 0, "text": "he", "logprobs": None, "finish_reason": None}],
    }
    last = render_completion_chunk(chunk(finish="length"), "openai/gpt-5", include_usage=False)
    validate("CreateCompletionResponse", last)


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "x"}, "suffix"),
    ],
)
def test_completion_refusals(changes, param):
    with pytest.raises(UnsupportedParameter) as info:
        parse_completion({"model": "m", "prompt": "x", **changes})
    assert info.value.param == param


# ---------------------------------------------------------------- embeddings


def test_embeddings_base64_matches_float32():
    model, request, _override, encoding = parse_embeddings(
        {"model": "openai/text-embedding-3-small", "input": ["a", "b"], "encoding_format": "base64"}
    )
    assert (model, request.input, request.encoding_format, encoding) == (
        "openai/text-embedding-3-small",
        ["a", "b"],
        "float",
        "base64",
    )
    response = EmbeddingResponse(
        model="te3",
        data=[Embedding(index=0, vector=[0.5, -1.0]), Embedding(index=1, vector=[0.25, 2.0])],
        usage=Usage(prompt_tokens=2),
    )
    body = render_embeddings(response, "openai/text-embedding-3-small", "base64")
    decoded = struct.unpack("<2f", base64.b64decode(body["data"][1]["embedding"]))
    assert decoded == (0.25, 2.0)
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    as_floats = render_embeddings(response, "openai/text-embedding-3-small", "float")
    validate("CreateEmbeddingResponse", as_floats)  # the schema describes the float form only
    assert as_floats["data"][0]["embedding"] == [0.5, -1.0]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([], "must not be empty"),
        ([""], "empty strings"),
        ([1, "a"], "Invalid 'input'"),
        (5, "got number"),
    ],
)
def test_embeddings_bad_input(value, fragment):
    with pytest.raises(InvalidRequest) as info:
        parse_embeddings({"model": "m", "input": value})
    assert info.value.param == "input"
    assert fragment in info.value.message


def test_embeddings_token_arrays():
    _, request, _, _ = parse_embeddings({"model": "m", "input": [[1, 2], [3]]})
    assert request.input == [[1, 2], [3]]
    _, request, _, _ = parse_embeddings({"model": "m", "input": [5, 6]})
    assert request.input == [[5, 6]]


# ---------------------------------------------------------------- Responses API


RESPONSES_BODY = {
    "model": "openai/gpt-5",
    "instructions": "be brief",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ],
    "tools": [
        {"type": "function", "name": "w", "parameters": {"type": "object", "properties": {}}}
    ],
    "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
    "max_output_tokens": 50,
}


def test_responses_parse_items_into_messages():
    inbound = parse_responses(RESPONSES_BODY)
    messages = inbound.chat.messages
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    assert [c.id for c in messages[2].tool_calls] == ["c1", "c2"]
    assert messages[3].tool_call_id == "c1" and messages[3].content == "sunny"
    assert inbound.chat.max_tokens == 50
    assert inbound.chat.response_format.type == "json_schema"
    assert inbound.needs == {"tools", "json_schema"}


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"input": [{"type": "file_search_call"}]}, "input[0].type"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ],
)
def test_responses_refusals(changes, param):
    with pytest.raises(InvalidRequest) as info:
        parse_responses({**RESPONSES_BODY, **changes})
    assert info.value.param == param


def test_responses_render_validates():
    inbound = parse_responses(RESPONSES_BODY)
    shell = ResponseShell(RESPONSES_BODY, inbound)
    body = render_response(
        shell,
        chat_response(text="ok", calls=[ToolCall(id="c9", name="w", arguments="{}")]),
        "openai/gpt-5",
    )
    validate("Response", body)
    assert [item["type"] for item in body["output"]] == ["message", "function_call"]
    assert body["output"][1]["call_id"] == "c9"
    assert body["usage"]["input_tokens"] == 12 and body["usage"]["total_tokens"] == 15
    assert body["store"] is False and body["model"] == "openai/gpt-5"


def test_responses_stream_events_validate_and_sequence():
    inbound = parse_responses({**RESPONSES_BODY, "stream": True})
    stream = ResponsesStream(ResponseShell(RESPONSES_BODY, inbound))
    raw = stream.start("openai/gpt-5")
    raw += stream.chunk(chunk(content="Hel"))
    raw += stream.chunk(chunk(content="lo"))
    raw += stream.chunk(chunk(calls=[ToolCallDelta(index=0, id="c5", name="w", arguments='{"a"')]))
    raw += stream.chunk(chunk(calls=[ToolCallDelta(index=0, arguments=":1}")], finish="tool_calls"))
    raw += stream.chunk(chunk(choices=False, usage=Usage(prompt_tokens=7, completion_tokens=4)))
    raw += stream.finish("openai/gpt-5")
    events = sse_events(raw)
    for name, data in events:
        assert data["type"] == name
        validate(RESPONSE_EVENT_SCHEMAS[name], data)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["arguments"] == '{"a":1}'
    assert final["usage"]["output_tokens"] == 4


# ---------------------------------------------------------------- Anthropic Messages


ANTHROPIC_BODY = {
    "model": "anthropic/claude-sonnet-4-5",
    "max_tokens": 100,
    "system": [{"type": "text", "text": "be brief"}],
    "messages": [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "tu1", "name": "w", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "tu1",
                    "content": [{"type": "text", "text": "sunny"}],
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ],
    "tools": [{"name": "w", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "any"},
    "stop_sequences": ["END"],
    "metadata": {"user_id": "u-7"},
}


def test_messages_parse():
    inbound = parse_messages(ANTHROPIC_BODY)
    messages = inbound.chat.messages
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[2].tool_calls == [ToolCall(id="tu1", name="w", arguments='{"city":"Oslo"}')]
    assert messages[3].tool_call_id == "tu1" and messages[3].content == "sunny"
    assert inbound.chat.tool_choice == "required"
    assert (inbound.chat.max_tokens, inbound.chat.stop, inbound.chat.user) == (100, ["END"], "u-7")


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "messages[0].content[0].type",
        ),
        ({"temperature": 1.5}, "temperature"),
    ],
)
def test_messages_bad_input(changes, param):
    data = {k: v for k, v in {**ANTHROPIC_BODY, **changes}.items() if v is not None}
    with pytest.raises(InvalidRequest) as info:
        parse_messages(data)
    assert info.value.param == param


def test_messages_render_and_stream():
    body = render_message(
        chat_response(
            text="hi",
            calls=[ToolCall(id="tu2", name="w", arguments='{"x":1}')],
            finish="tool_calls",
        ),
        "anthropic/claude-sonnet-4-5",
    )
    assert body["content"] == [
        {"type": "text", "text": "hi"},
        {"type": "tool_use", "id": "tu2", "name": "w", "input": {"x": 1}},
    ]
    assert body["stop_reason"] == "tool_use"
    assert body["usage"] == {
        "input_tokens": 8,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
    }
    stream = MessagesStream()
    raw = stream.start("anthropic/claude-sonnet-4-5")
    raw += stream.chunk(chunk(content="Hi"))
    raw += stream.chunk(
        chunk(
            calls=[ToolCallDelta(index=0, id="tu3", name="w", arguments="{}")], finish="tool_calls"
        )
    )
    raw += stream.chunk(chunk(choices=False, usage=Usage(prompt_tokens=5, completion_tokens=2)))
    raw += stream.finish("anthropic/claude-sonnet-4-5")
    events = sse_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[5][1]["content_block"]["id"] == "tu3"
    assert events[6][1]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert events[8][1]["delta"]["stop_reason"] == "tool_use"
    assert events[8][1]["usage"]["output_tokens"] == 2


def test_anthropic_cache_breakpoints_are_kept_checked_and_sent_back():
    mark = {"type": "ephemeral"}
    long_mark = {"type": "ephemeral", "ttl": "5m"}
    inbound = parse_messages(
        {
            "model": "anthropic/claude-sim",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "Rules.", "cache_control": long_mark}],
            "tools": [{"name": "t", "input_schema": {"type": "object"}, "cache_control": mark}],
            "messages": [
                {"role": "user", "content": "Run it"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "tu1", "name": "t", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "tu1",
                            "content": "done",
                            "cache_control": mark,
                        }
                    ],
                },
            ],
        }
    )
    assert inbound.cache_breakpoints == 3
    body = anthropic_wire(inbound.chat, "claude", stream=False)
    assert body["system"] == [{"type": "text", "text": "Rules.", "cache_control": long_mark}]
    assert body["tools"][0]["cache_control"] == mark
    assert body["messages"][-1]["content"][-1]["cache_control"] == mark
    assert "cache_control" not in body["messages"][0]["content"][0]
    converse = bedrock_wire(inbound.chat)
    assert converse["system"] == [{"text": "Rules."}, CACHE_POINT]
    assert converse["toolConfig"]["tools"][-1] == CACHE_POINT
    assert converse["messages"][-1]["content"][-1] == CACHE_POINT

    def refused(control, count=1):
        block = {"type": "text", "text": "x", "cache_control": control}
        with pytest.raises(InvalidRequest) as info:
            parse_messages(
                {
                    "model": "m",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": [block] * count}],
                }
            )
        return info.value

    assert refused({"type": "persistent"}).param == "messages[0].content[0].cache_control.type"
    assert refused({"type": "ephemeral", "ttl": "2h"}).param.endswith("cache_control.ttl")
    assert refused({"type": "ephemeral", "extra": 1}).param.endswith("cache_control.extra")
    assert "Found 5" in str(refused(mark, count=5))
    with pytest.raises(UnsupportedParameter) as info:  # its price is not in the catalog
        parse_messages(
            {
                "model": "m",
                "max_tokens": 5,
                "system": [{"type": "text", "text": "x", "cache_control": {**mark, "ttl": "1h"}}],
                "messages": [{"role": "user", "content": "Hi"}],
            }
        )
    assert info.value.param == "system[0].cache_control.ttl"
