"""The official ``openai`` SDK against the gateway (uvicorn on port 0, the simulator upstream):
chat, streaming with usage, a tool-call round trip, json_schema output, embeddings, models,
the Responses API, and the SDK's typed exceptions. Bodies and chunks are validated against
the vendored OpenAI schemas."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.gateway.schema_check import validate
from tests.gateway.test_wire_formats import RESPONSE_EVENT_SCHEMAS

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client(gateway_server, sim_world):
    with openai.OpenAI(
        base_url=f"{gateway_server.url}/v1", api_key=sim_world.key, max_retries=0
    ) as sdk:
        yield sdk


def test_chat_non_stream(client):
    raw = client.chat.completions.with_raw_response.create(
        model="openai/gpt-sim", messages=[{"role": "user", "content": "Hello there"}], max_tokens=20
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.model == "openai/gpt-sim"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert (
        completion.usage.total_tokens
        == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert raw.headers["x-megarouter-provider"] == "openai"


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(
        model="openai/gpt-sim",
        messages=[{"role": "user", "content": "Stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.to_dict())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens >= 1
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["stop"]


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "Use the tools to get the weather in Paris"}]
    first = client.chat.completions.with_raw_response.create(
        model="openai/gpt-sim", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    validate("CreateChatCompletionResponse", first.http_response.json())
    choice = first.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    second = client.chat.completions.create(
        model="openai/gpt-sim", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


def test_tool_call_stream(client):
    stream = client.chat.completions.create(
        model="openai/gpt-sim",
        messages=[{"role": "user", "content": "call a tool for Oslo"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    chunks = list(stream)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.to_dict())
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assert "city" in json.loads(arguments)


def test_json_schema_output(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    raw = client.chat.completions.with_raw_response.create(
        model="openai/gpt-sim",
        messages=[{"role": "user", "content": "A person"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    content = raw.parse().choices[0].message.content
    jsonschema.validate(json.loads(content), schema)


def test_embeddings_default_base64_and_float(client):
    default = client.embeddings.create(model="openai/embed-sim", input=["alpha", "beta"])
    floats = client.embeddings.with_raw_response.create(
        model="openai/embed-sim", input=["alpha", "beta"], encoding_format="float"
    )
    validate("CreateEmbeddingResponse", floats.http_response.json())
    parsed = floats.parse()
    assert len(default.data) == 2 and default.model == "openai/embed-sim"
    for decoded, exact in zip(default.data, parsed.data, strict=True):
        assert len(decoded.embedding) == len(exact.embedding) > 0
        assert decoded.embedding == pytest.approx(exact.embedding, rel=1e-6)  # float32 on the wire


def test_models_list_and_retrieve(client):
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    ids = [model.id for model in raw.parse()]
    assert "openai/gpt-sim" in ids and "anthropic/claude-sim" in ids and "auto:cost" in ids
    assert client.models.retrieve("openai/gpt-sim").owned_by == "openai"


def test_responses_text_and_stream(client):
    raw = client.responses.with_raw_response.create(
        model="openai/gpt-sim", input="Write a line", instructions="Be brief", max_output_tokens=30
    )
    validate("Response", raw.http_response.json())
    response = raw.parse()
    assert response.status == "completed"
    assert response.output_text
    assert response.model == "openai/gpt-sim"
    events = list(
        client.responses.create(model="openai/gpt-sim", input="Write a line", stream=True)
    )
    for event in events:
        validate(RESPONSE_EVENT_SCHEMAS[event.type], event.to_dict())
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text


def test_responses_tool_use_round_trip(client):
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    first = client.responses.create(
        model="openai/gpt-sim", input="Use a tool for Rome", tools=[tool]
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    second = client.responses.create(
        model="openai/gpt-sim",
        tools=[tool],
        input=[
            {"role": "user", "content": "Use a tool for Rome"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": '{"temp_c": 25}',
            },
        ],
    )
    assert second.output_text


def test_typed_exceptions(client, gateway_server, sim_world):
    messages = [{"role": "user", "content": "x"}]
    with (
        openai.OpenAI(
            base_url=f"{gateway_server.url}/v1", api_key="mrk_wrong", max_retries=0
        ) as bad,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        bad.chat.completions.create(model="openai/gpt-sim", messages=messages)
    validate("ErrorResponse", info.value.response.json())
    with (
        openai.OpenAI(
            base_url=f"{gateway_server.url}/v1", api_key=sim_world.openai_only_key, max_retries=0
        ) as restricted,
        pytest.raises(openai.PermissionDeniedError),
    ):
        restricted.chat.completions.create(model="anthropic/claude-sim", messages=messages)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="openai/does-not-exist", messages=messages)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="openai/gpt-sim", messages=messages, max_tokens=-3)
    assert info.value.param == "max_tokens"
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="openai/gpt-limited", messages=messages)
    assert info.value.response.headers["retry-after"] == "7"
