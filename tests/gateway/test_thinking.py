"""Extended thinking end to end: the official ``anthropic`` SDK through the gateway to the
simulator's Anthropic surface (which signs its thinking and refuses a follow-up without it, as
the real API does), budget checks in Anthropic's envelope, thinking in OpenAI-format answers as
``reasoning_content``, the Anthropic and Bedrock adapters' wire translation, and the cost."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import httpx
import jsonschema
import orjson
import pytest

from gateway.providers.anthropic import AnthropicStreamDecoder, request_to_wire, response_from_wire
from gateway.providers.bedrock import request_to_wire as bedrock_request
from gateway.providers.bedrock import response_from_wire as bedrock_response
from gateway.providers.openai import request_to_wire as openai_request
from gateway.providers.types import (
    ChatChunk,
    ChatRequest,
    ContentPart,
    Message,
    ThinkingConfig,
    ToolCall,
)
from gateway.simulator.engine import REDACTED_TRIGGER, count_tokens, thinking_signature
from tests.gateway.conftest import fixture_bytes, fixture_json, reset_caches
from tests.gateway.factories import PRICE_IN, PRICE_OUT

CLAUDE = "anthropic/claude-think-sim"  # a model the catalog says reasons (fixture below)
THINKING = {"type": "enabled", "budget_tokens": 1024}
TOOLS = [
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
ASK = [{"role": "user", "content": "Use the tool for Lima"}]

# The parts of Anthropic's Messages request schema that extended thinking touches, written from
# the API reference (ThinkingConfigEnabled / Disabled, RequestThinkingBlock,
# RequestRedactedThinkingBlock): exact fields, nothing extra.
THINKING_BLOCK = {
    "type": "object",
    "properties": {
        "type": {"const": "thinking"},
        "thinking": {"type": "string"},
        "signature": {"type": "string"},
    },
    "required": ["type", "thinking", "signature"],
    "additionalProperties": False,
}
REDACTED_BLOCK = {
    "type": "object",
    "properties": {"type": {"const": "redacted_thinking"}, "data": {"type": "string"}},
    "required": ["type", "data"],
    "additionalProperties": False,
}
OTHER_BLOCK = {
    "type": "object",
    "properties": {"type": {"enum": ["text", "image", "tool_use", "tool_result"]}},
    "required": ["type"],
}
ANTHROPIC_REQUEST = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "properties": {
        "max_tokens": {"type": "integer", "minimum": 1},
        "thinking": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": "enabled"},
                        "budget_tokens": {"type": "integer", "minimum": 1024},
                    },
                    "required": ["type", "budget_tokens"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"type": {"const": "disabled"}},
                    "required": ["type"],
                    "additionalProperties": False,
                },
            ]
        },
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["user", "assistant"]},
                    "content": {
                        "oneOf": [
                            {"type": "string"},
                            {
                                "type": "array",
                                "items": {"oneOf": [THINKING_BLOCK, REDACTED_BLOCK, OTHER_BLOCK]},
                            },
                        ]
                    },
                },
            },
        },
    },
}


def check_anthropic_request(body: dict) -> None:
    """The body matches the schema; the budget is under max_tokens; in every assistant turn
    the reasoning blocks come before its tool_use blocks."""
    jsonschema.validate(body, ANTHROPIC_REQUEST)
    if body.get("thinking", {}).get("type") == "enabled":
        assert body["thinking"]["budget_tokens"] < body["max_tokens"]
    for turn in body["messages"]:
        if turn["role"] != "assistant" or isinstance(turn["content"], str):
            continue
        kinds = [block["type"] for block in turn["content"]]
        reasoning = [i for i, k in enumerate(kinds) if k in ("thinking", "redacted_thinking")]
        uses = [i for i, k in enumerate(kinds) if k == "tool_use"]
        if reasoning and uses:
            assert max(reasoning) < min(uses)


@pytest.fixture(scope="module")
def thinker(sim_world):
    """A Claude model that supports reasoning, served by the simulator's Anthropic surface."""
    from routing.models import Credential, Provider
    from tests.gateway import factories as f

    model = f.model_create(
        Provider.objects.get(slug="anthropic"), "claude-think-sim", supports_reasoning=True
    )
    f.deployment_create(
        model,
        name="sim-claude-think",
        base_url=f"{sim_world.sim_url}/anthropic",
        credential=Credential.objects.get(name="sim"),
    )
    reset_caches()
    return CLAUDE


@pytest.fixture(scope="module")
def client(gateway_server, sim_world, thinker):
    with anthropic.Anthropic(
        base_url=gateway_server.url, api_key=sim_world.key, max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def http(gateway_server, sim_world, thinker):
    with httpx.Client(base_url=gateway_server.url, headers=sim_world.auth(), timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def reasoner(sim_world):
    """An OpenAI-compatible model that reasons aloud (the simulator's ``think`` knob answers
    with DeepSeek's ``reasoning_content``)."""
    from routing.models import Credential, Provider
    from tests.gateway import factories as f

    model = f.model_create(
        Provider.objects.get(slug="openai"), "reasoner-sim", supports_reasoning=True
    )
    f.deployment_create(
        model,
        name="sim-reasoner",
        base_url=f"{sim_world.sim_url}/openai/v1",
        upstream_name="reasoner-sim~think=1",
        credential=Credential.objects.get(name="sim"),
    )
    reset_caches()
    return "openai/reasoner-sim"


# ---------------------------------------------------------------- through the gateway


def test_two_turn_thinking_with_tools(client):
    first = client.messages.create(
        model=CLAUDE, max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=ASK
    )
    assert [block.type for block in first.content] == ["thinking", "tool_use"]
    thought = first.content[0]
    assert thought.thinking.startswith("Let me think:")
    assert thought.signature == thinking_signature(thought.thinking)
    assert first.stop_reason == "tool_use"
    use = first.content[1]
    # the SDK passes the answer's blocks back as they came: the thinking block first
    follow_up = [
        *ASK,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C"}],
        },
    ]
    second = client.messages.create(
        model=CLAUDE, max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=follow_up
    )
    assert [block.type for block in second.content] == ["thinking", "text"]
    assert second.stop_reason == "end_turn" and second.content[1].text
    # thinking is output: within output_tokens, as Anthropic counts it
    assert second.usage.output_tokens == count_tokens(second.content[0].thinking) + count_tokens(
        second.content[1].text
    )


def test_follow_up_without_its_thinking_block_is_refused(client):
    first = client.messages.create(
        model=CLAUDE, max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=ASK
    )
    use = first.content[1]
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C"}],
    }
    dropped = [*ASK, {"role": "assistant", "content": [use]}, result]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=CLAUDE, max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=dropped
        )
    assert "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in str(info.value)
    thought = first.content[0].model_dump()
    forged = [
        *ASK,
        {"role": "assistant", "content": [thought | {"thinking": "Something else."}, use]},
        result,
    ]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=CLAUDE, max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=forged
        )
    assert "Invalid `signature` in `thinking` block" in str(info.value)


def test_stream_relays_thinking_then_signature_in_order(client):
    with client.messages.stream(
        model=CLAUDE, max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=ASK
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    raw = [e for e in events if e.type.startswith("content_block")]
    starts = [(e.index, e.content_block.type) for e in raw if e.type == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "tool_use")]
    deltas = [(e.index, e.delta.type) for e in raw if e.type == "content_block_delta"]
    thinking = [d for d in deltas if d[1] == "thinking_delta"]
    assert len(thinking) > 1 and all(index == 0 for index, _ in thinking)
    # the signature ends block 0, after every thinking_delta and before block 0 stops
    assert deltas.index((0, "signature_delta")) == len(thinking)
    order = [(e.type, e.index) for e in raw if e.type != "content_block_delta"]
    assert order == [
        ("content_block_start", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_stop", 1),
    ]
    text = "".join(e.delta.thinking for e in raw if e.type == "content_block_delta" and e.index == 0 and e.delta.type == "thinking_delta")  # fmt: skip
    assert final.content[0].thinking == text
    assert final.content[0].signature == thinking_signature(text)
    # the streamed block is as good as the non-streamed one: the follow-up is accepted
    use = final.content[1]
    second = client.messages.create(
        model=CLAUDE,
        max_tokens=2048,
        thinking=THINKING,
        tools=TOOLS,
        messages=[
            *ASK,
            {"role": "assistant", "content": final.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C"}],
            },
        ],
    )
    assert second.content[-1].type == "text"


def test_redacted_thinking_round_trip(client):
    ask = [{"role": "user", "content": f"{REDACTED_TRIGGER} use the tool"}]
    first = client.messages.create(
        model=CLAUDE, max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=ask
    )
    assert [block.type for block in first.content] == ["redacted_thinking", "tool_use"]
    with client.messages.stream(
        model=CLAUDE, max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=ask
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].model_dump() == first.content[0].model_dump()
    use = first.content[1]
    second = client.messages.create(
        model=CLAUDE,
        max_tokens=2048,
        thinking=THINKING,
        tools=TOOLS,
        messages=[
            *ask,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "ok"}],
            },
        ],
    )
    assert second.content[-1].type == "text"


@pytest.mark.parametrize(
    ("thinking", "max_tokens", "message"),
    [
        (
            {"type": "enabled", "budget_tokens": 1023},
            4096,
            "thinking.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            {"type": "enabled", "budget_tokens": 2048},
            2048,
            "`max_tokens` must be greater than `thinking.budget_tokens`.",
        ),
        (
            {"type": "enabled", "budget_tokens": 4096},
            2048,
            "`max_tokens` must be greater than `thinking.budget_tokens`.",
        ),
        ({"type": "enabled"}, 2048, "Missing required parameter: 'thinking.budget_tokens'."),
    ],
)
def test_budget_is_checked_in_anthropics_envelope(http, thinking, max_tokens, message):
    body = {"model": CLAUDE, "max_tokens": max_tokens, "thinking": thinking, "messages": ASK}
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 400
    data = response.json()
    assert data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["param"] == "thinking.budget_tokens"
    assert data["error"]["message"].startswith(message)


def test_thinking_type_is_checked(http):
    body = {"model": CLAUDE, "max_tokens": 2048, "thinking": {"type": "on"}, "messages": ASK}
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "thinking.type"


def test_thinking_is_charged_at_the_output_price(client):
    raw = client.messages.with_raw_response.create(
        model=CLAUDE,
        max_tokens=2048,
        thinking=THINKING,
        messages=[{"role": "user", "content": "Think about it"}],
    )
    message = raw.parse()
    assert message.content[0].type == "thinking"
    usage = message.usage
    expected = usage.input_tokens * PRICE_IN + usage.output_tokens * PRICE_OUT
    assert Decimal(raw.headers["x-megarouter-cost-usd"]) == expected


def test_openai_format_carries_reasoning_in_reasoning_content(http, reasoner):
    body = {"model": reasoner, "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    data = http.post("/v1/chat/completions", json=body).json()
    message = data["choices"][0]["message"]
    assert message["reasoning_content"].startswith("Let me think:")
    assert "Let me think" not in message["content"]
    thought = count_tokens(message["reasoning_content"])
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == thought
    stream = http.post("/v1/chat/completions", json=body | {"stream": True})
    chunks = [
        orjson.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning == message["reasoning_content"]
    assert content == message["content"]
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_content:])
    # Anthropic-format clients get the same reasoning as an (unsigned) thinking block
    anthropic_body = {"model": reasoner, "max_tokens": 200, "messages": body["messages"]}
    blocks = http.post("/v1/messages", json=anthropic_body).json()["content"]
    assert blocks[0] == {
        "type": "thinking",
        "thinking": message["reasoning_content"],
        "signature": "",
    }
    assert blocks[1]["type"] == "text"


# ---------------------------------------------------------------- adapters' wire format


ENABLED = ThinkingConfig(type="enabled", budget_tokens=1024)


def _conversation(thinking: ThinkingConfig | None = ENABLED) -> ChatRequest:
    return ChatRequest(
        messages=[
            Message(role="user", content="Weather in Paris?"),
            Message(
                role="assistant",
                content=[
                    ContentPart(type="thinking", thinking="I should call it.", signature="sig=="),
                    ContentPart(type="redacted_thinking", data="EmwKAhgB"),
                    ContentPart(type="text", text="Checking."),
                ],
                tool_calls=[
                    ToolCall(id="toolu_1", name="get_weather", arguments='{"city":"Paris"}')
                ],
            ),
            Message(role="tool", tool_call_id="toolu_1", content="18 C"),
        ],
        max_tokens=2048,
        thinking=thinking,
    )


def test_anthropic_request_sends_thinking_and_blocks_exactly():
    body = request_to_wire(_conversation(), "claude-sonnet-4", stream=False)
    check_anthropic_request(body)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "I should call it.", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "EmwKAhgB"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    disabled = request_to_wire(
        _conversation(ThinkingConfig(type="disabled")), "claude-sonnet-4", stream=False
    )
    check_anthropic_request(disabled)
    assert disabled["thinking"] == {"type": "disabled"}
    plain = request_to_wire(
        ChatRequest(messages=[Message(role="user", content="hi")]), "m", stream=False
    )
    assert "thinking" not in plain


def test_unsigned_reasoning_is_not_sent_to_anthropic_or_openai():
    request = ChatRequest(
        messages=[
            Message(role="user", content="Hi"),
            Message(
                role="assistant",
                content=[
                    ContentPart(type="thinking", thinking="from deepseek"),
                    ContentPart(type="text", text="Hello"),
                ],
            ),
            Message(role="user", content="Again"),
        ]
    )
    body = request_to_wire(request, "m", stream=False)
    check_anthropic_request(body)
    assert body["messages"][1]["content"] == [{"type": "text", "text": "Hello"}]
    wire = openai_request(_conversation(), model="deepseek-reasoner", stream=False)
    assert wire["messages"][1]["content"] == [{"type": "text", "text": "Checking."}]
    assert "thinking" not in wire


def test_anthropic_response_keeps_thinking_blocks_in_order():
    response = response_from_wire(fixture_json("anthropic", "message_thinking.json"), "x")
    message = response.choices[0].message
    assert isinstance(message.content, list)
    assert [(p.type, p.signature, p.data) for p in message.content] == [
        ("thinking", "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL....", None),
        ("redacted_thinking", None, "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj"),
    ]  # fmt: skip
    assert message.text() == ""
    assert message.tool_calls[0].name == "get_weather"
    assert response.usage.completion_tokens == 180 and response.usage.reasoning_tokens == 0


@pytest.mark.parametrize("split", [1, 7, 64, 10_000])
def test_anthropic_stream_decodes_thinking_and_signature(split):
    data = fixture_bytes("anthropic", "stream_thinking.sse")
    decoder = AnthropicStreamDecoder("x")
    chunks: list[ChatChunk] = []
    for start in range(0, len(data), split):
        decoder.decode(data[start : start + split], chunks)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thinking = "".join(d.thinking or "" for d in deltas)
    assert thinking.startswith("I need to find the GCD") and thinking.endswith("147")
    signatures = [i for i, d in enumerate(deltas) if d.signature]
    texts = [i for i, d in enumerate(deltas) if d.content]
    assert len(signatures) == 1 and signatures[0] < texts[0]
    assert deltas[signatures[0]].signature.startswith("EqQBCgIYAhIM")
    assert chunks[-1].usage.completion_tokens == 303


def test_bedrock_maps_thinking_to_reasoning_content():
    body = bedrock_request(_conversation())
    assert body["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}
    }
    assert body["messages"][1]["content"][:3] == [
        {
            "reasoningContent": {
                "reasoningText": {"text": "I should call it.", "signature": "sig=="}
            }
        },
        {"reasoningContent": {"redactedContent": "EmwKAhgB"}},
        {"text": "Checking."},
    ]
    assert "thinking" not in body
    response = bedrock_response(
        {
            "output": {
                "message": {
                    "role": "assistant",
                    "content": [
                        {
                            "reasoningContent": {
                                "reasoningText": {"text": "Hmm.", "signature": "s1"}
                            }
                        },
                        {"text": "Answer."},
                    ],
                }
            },
            "stopReason": "end_turn",
            "usage": {"inputTokens": 10, "outputTokens": 20, "totalTokens": 30},
        },
        "anthropic.claude-sonnet-4",
    )
    parts = response.choices[0].message.content
    assert [(p.type, p.thinking, p.signature, p.text) for p in parts] == [
        ("thinking", "Hmm.", "s1", None),
        ("text", None, None, "Answer."),
    ]
