"""The official ``anthropic`` SDK against /v1/messages: non-stream, stream, tool use, typed
errors; an OpenAI-catalog model answers in Anthropic's format and vice versa."""

from __future__ import annotations

import anthropic
import pytest


@pytest.fixture(scope="module")
def client(gateway_server, sim_world):
    with anthropic.Anthropic(
        base_url=gateway_server.url, api_key=sim_world.key, max_retries=0
    ) as sdk:
        yield sdk


@pytest.mark.parametrize("model", ["anthropic/claude-sim", "openai/gpt-sim"])
def test_messages_non_stream(client, model):
    raw = client.messages.with_raw_response.create(
        model=model,
        max_tokens=40,
        system="Be brief",
        messages=[{"role": "user", "content": "Hello"}],
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.model == model
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-megarouter-model"] == model


def test_messages_stream(client):
    with client.messages.stream(
        model="anthropic/claude-sim",
        max_tokens=40,
        messages=[{"role": "user", "content": "Stream it"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens >= 1


def test_messages_tool_use_round_trip(client):
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    messages = [{"role": "user", "content": "Use the tool for Lima"}]
    first = client.messages.create(
        model="openai/gpt-sim", max_tokens=100, tools=tools, messages=messages
    )
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    messages += [
        {
            "role": "assistant",
            "content": [block.model_dump(exclude_none=True) for block in first.content],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C"}],
        },
    ]
    second = client.messages.create(
        model="openai/gpt-sim", max_tokens=100, tools=tools, messages=messages
    )
    assert second.stop_reason == "end_turn" and second.content[0].text
    with client.messages.stream(
        model="anthropic/claude-sim", max_tokens=100, tools=tools, messages=messages[:1]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert next(b for b in final.content if b.type == "tool_use").input["city"]


def test_typed_errors(client, gateway_server):
    with (
        anthropic.Anthropic(base_url=gateway_server.url, api_key="mrk_wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError),
    ):
        bad.messages.create(
            model="anthropic/claude-sim",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
        )
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="anthropic/none", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="anthropic/claude-sim", max_tokens=5, messages=[])
    assert info.value.body["error"]["param"] == "messages"
