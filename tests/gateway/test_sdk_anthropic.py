"""The official ``anthropic`` SDK against /v1/messages: non-stream, stream, tool use, typed
errors; an OpenAI-catalog model answers in Anthropic's format and vice versa; count_tokens."""

from __future__ import annotations

import anthropic
import httpx
import orjson
import pytest

from gateway.simulator.engine import count_tokens


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


def test_count_tokens_is_the_providers_count_or_the_gateways_estimate(
    client, gateway_server, sim_world
):
    tools = [{"name": "lookup", "description": "Look it up", "input_schema": {"type": "object"}}]
    system, text = "Be brief and exact.", "How many tokens is this question?"
    raw = client.messages.with_raw_response.count_tokens(
        model="anthropic/claude-sim",
        system=system,
        messages=[{"role": "user", "content": text}],
        tools=tools,
    )
    # the simulator's rule: tokens + 3 per message, plus the tools' JSON
    wire_tools = orjson.dumps(tools).decode()
    expected = count_tokens(system) + 3 + count_tokens(text) + 3 + count_tokens(wire_tools)
    assert raw.parse().input_tokens == expected
    assert raw.headers["x-megarouter-token-count"] == "provider"
    assert raw.headers["x-megarouter-model"] == "anthropic/claude-sim"
    assert "x-megarouter-cost-usd" not in raw.headers  # nothing is charged for counting
    assert "x-megarouter-usage-id" not in raw.headers
    estimated = client.messages.with_raw_response.count_tokens(
        model="openai/gpt-sim", messages=[{"role": "user", "content": text}]
    )
    assert estimated.headers["x-megarouter-token-count"] == "estimate"
    assert estimated.parse().input_tokens > 0
    # a key limited to openai/* cannot count on an Anthropic model (its allow-list applies)
    with (
        anthropic.Anthropic(
            base_url=gateway_server.url, api_key=sim_world.openai_only_key, max_retries=0
        ) as limited,
        pytest.raises((anthropic.PermissionDeniedError, anthropic.NotFoundError)),
    ):
        limited.messages.count_tokens(
            model="anthropic/claude-sim", messages=[{"role": "user", "content": text}]
        )
    with httpx.Client(base_url=gateway_server.url, headers=sim_world.auth(), timeout=15) as http:
        # generation settings are not count_tokens fields: refused as Anthropic refuses them
        body = {"model": "anthropic/claude-sim", "max_tokens": 5, "messages": []}
        refused = http.post("/v1/messages/count_tokens", json=body)
        assert refused.status_code == 400
        assert refused.json()["type"] == "error"
        assert refused.json()["error"]["type"] == "invalid_request_error"
        assert refused.json()["error"]["param"] == "max_tokens"
        # every /v1/messages path answers in Anthropic's envelope, 404 and 405 included
        wrong_method = http.get("/v1/messages/count_tokens")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert wrong_method.json()["error"]["type"] == "invalid_request_error"
        missing = http.post("/v1/messages/batches", json={})
        assert missing.status_code == 404
        assert missing.json() == {
            "type": "error",
            "error": missing.json()["error"] | {"type": "not_found_error"},
        }
