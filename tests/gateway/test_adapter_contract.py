"""Every adapter against the provider simulator (a real HTTP server): the same contract for
all five wire protocols — text, streams, tools, usage and every error class."""

from __future__ import annotations

import asyncio
import re
import socket

import orjson
import pytest

from gateway.http import Timeouts
from gateway.providers.adapters import get_adapter
from gateway.providers.types import (
    ChatChunk,
    ChatRequest,
    ErrorKind,
    Message,
    ProviderError,
    ResponseFormat,
)
from tests.gateway.factories import WEATHER_TOOL, EndpointFactory, chat, fault

pytestmark = pytest.mark.usefixtures("close_clients")

KINDS = ["openai", "azure", "anthropic", "gemini", "bedrock"]
TOKEN = re.compile(r"\w+|[^\w\s]")
# "You are terse." = 4 tokens + 3; "Hello there, how are you today?" = 8 tokens + 3.
PROMPT_TOKENS = 18
FAST = Timeouts(connect=2.0, first_byte=0.5, stall=0.3, total=1.2)


def endpoint(kind: str, url: str, **kwargs: object):
    return EndpointFactory(kind=kind, url=url, **kwargs)


async def collect(adapter, ep, request: ChatRequest, timeouts: Timeouts | None = None):
    chunks: list[ChatChunk] = []
    async for item in adapter.stream(ep, request, timeouts=timeouts):
        chunks.append(item)
    return chunks


def stream_text(chunks: list[ChatChunk]) -> str:
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)


def stream_finish(chunks: list[ChatChunk]) -> str | None:
    reasons = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    return reasons[-1] if reasons else None


@pytest.mark.parametrize("kind", KINDS)
async def test_complete_text_and_usage(kind: str, simulator_url: str) -> None:
    ep = endpoint(kind, simulator_url, model=endpoint(kind, simulator_url).model + "~tokens=6")
    response = await get_adapter(kind).complete(ep, chat(max_tokens=50))

    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    text = choice.message.content
    assert isinstance(text, str)
    assert len(TOKEN.findall(text)) == 6 and text.endswith(".")
    assert response.usage.prompt_tokens == PROMPT_TOKENS
    assert response.usage.completion_tokens == 6
    assert response.usage.total_tokens == PROMPT_TOKENS + 6


@pytest.mark.parametrize("kind", KINDS)
async def test_cache_and_reasoning_usage(kind: str, simulator_url: str) -> None:
    """Each provider's cache / reasoning usage fields land in the normalized Usage."""
    base = endpoint(kind, simulator_url).model
    ep = endpoint(kind, simulator_url, model=base + "~tokens=4~cached=5~reasoning=3")
    adapter = get_adapter(kind)
    for usage in (
        (await adapter.complete(ep, chat(max_tokens=50))).usage,
        (await collect(adapter, ep, chat(max_tokens=50)))[-1].usage,
    ):
        assert usage is not None
        assert (usage.prompt_tokens, usage.cached_tokens) == (PROMPT_TOKENS, 5)
        assert usage.completion_tokens == 4 + 3
        # Only OpenAI and Gemini report reasoning tokens apart.
        assert usage.reasoning_tokens == (3 if kind in ("openai", "azure", "gemini") else 0)


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_matches_complete(kind: str, simulator_url: str) -> None:
    ep = endpoint(kind, simulator_url)
    adapter = get_adapter(kind)
    request = chat(max_tokens=200)
    whole = await adapter.complete(ep, request)
    chunks = await collect(adapter, ep, request)

    assert stream_text(chunks) == whole.choices[0].message.content
    assert stream_finish(chunks) == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == PROMPT_TOKENS
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.completion_tokens == len(TOKEN.findall(stream_text(chunks)))


@pytest.mark.parametrize("kind", KINDS)
async def test_max_tokens_truncates_with_length(kind: str, simulator_url: str) -> None:
    ep = endpoint(kind, simulator_url, model=endpoint(kind, simulator_url).model + "~tokens=20")
    adapter = get_adapter(kind)
    response = await adapter.complete(ep, chat(max_tokens=4))
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 4
    chunks = await collect(adapter, ep, chat(max_tokens=4))
    assert stream_finish(chunks) == "length"
    assert stream_text(chunks) == response.choices[0].message.content


@pytest.mark.parametrize("kind", KINDS)
async def test_tool_calls(kind: str, simulator_url: str) -> None:
    ep = endpoint(kind, simulator_url)
    adapter = get_adapter(kind)
    request = chat("What's the weather in Oslo? Use a tool.", tools=[WEATHER_TOOL], max_tokens=100)
    response = await adapter.complete(ep, request)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.name == "get_weather"
    args = orjson.loads(call.arguments)
    assert set(args) == {"city", "days", "unit"}
    assert args["unit"] == "celsius" and 1 <= args["days"] <= 5
    assert response.usage.completion_tokens == len(TOKEN.findall(call.arguments))

    chunks = await collect(adapter, ep, request)
    deltas = [d for chunk in chunks for c in chunk.choices for d in c.delta.tool_calls or ()]
    assert {d.index for d in deltas} == {0}
    assert next(d.id for d in deltas if d.id) == call.id
    assert next(d.name for d in deltas if d.name) == "get_weather"
    assert orjson.loads("".join(d.arguments or "" for d in deltas)) == args
    assert stream_finish(chunks) == "tool_calls"


@pytest.mark.parametrize("kind", KINDS)
async def test_tool_round_trip_answers_with_text(kind: str, simulator_url: str) -> None:
    from gateway.providers.types import ToolCall

    ep = endpoint(kind, simulator_url)
    request = ChatRequest(
        messages=[
            Message(role="user", content="Weather in Oslo? Use a tool."),
            Message(
                role="assistant",
                content=None,
                tool_calls=[ToolCall(id="call_1", name="get_weather", arguments='{"city":"Oslo"}')],
            ),
            Message(role="tool", content='{"temp": 4}', tool_call_id="call_1", name="get_weather"),
        ],
        tools=[WEATHER_TOOL],
        max_tokens=60,
    )
    response = await get_adapter(kind).complete(ep, request)
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.tool_calls is None
    assert response.choices[0].message.content


@pytest.mark.parametrize("kind", ["openai", "azure", "gemini"])
async def test_json_schema_output(kind: str, simulator_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
    }
    request = chat(
        "Extract the person.",
        max_tokens=100,
        response_format=ResponseFormat(type="json_schema", name="person", schema=schema),
    )
    response = await get_adapter(kind).complete(endpoint(kind, simulator_url), request)
    data = orjson.loads(response.choices[0].message.content)
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int) and data["age"] >= 0


# ---------------------------------------------------------------- errors

ERROR_CASES = [
    ("fault=429~retry_after=3", ErrorKind.RATE_LIMITED, 3.0),
    ("fault=429~retry_after_ms=1500", ErrorKind.RATE_LIMITED, 1.5),
    ("fault=529", ErrorKind.OVERLOADED, 1.0),
    ("fault=503", ErrorKind.OVERLOADED, 1.0),
    ("fault=500", ErrorKind.SERVER_ERROR, None),
    ("fault=401", ErrorKind.AUTHENTICATION, None),
    ("fault=400", ErrorKind.BAD_REQUEST, None),
    ("fault=context", ErrorKind.CONTEXT_LENGTH, None),
    ("fault=reset", ErrorKind.CONNECTION, None),
    ("fault=malformed", ErrorKind.PROTOCOL, None),
    ("fault=cut", ErrorKind.CONNECTION, None),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("spec", "expected", "retry_after"), ERROR_CASES)
async def test_errors_complete(kind, spec, expected, retry_after, simulator_url) -> None:
    ep = fault(endpoint(kind, simulator_url), spec)
    with pytest.raises(ProviderError) as info:
        await get_adapter(kind).complete(ep, chat(max_tokens=20))
    assert info.value.kind is expected
    assert info.value.retry_after == retry_after
    assert info.value.retriable is (expected in {
        ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.SERVER_ERROR,
        ErrorKind.CONNECTION, ErrorKind.PROTOCOL, ErrorKind.AUTHENTICATION,
    })  # fmt: skip


STREAM_ERRORS = [
    ("fault=429~retry_after=2", ErrorKind.RATE_LIMITED, 0),
    ("fault=529", ErrorKind.OVERLOADED, 0),
    ("fault=500", ErrorKind.SERVER_ERROR, 0),
    ("fault=401", ErrorKind.AUTHENTICATION, 0),
    ("fault=context", ErrorKind.CONTEXT_LENGTH, 0),
    ("fault=reset", ErrorKind.CONNECTION, 0),
    ("fault=malformed~after=2", ErrorKind.PROTOCOL, None),
    ("fault=no_done", ErrorKind.PROTOCOL, None),
    ("fault=cut~after=3", ErrorKind.CONNECTION, None),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("spec", "expected", "yielded"), STREAM_ERRORS)
async def test_errors_stream(kind, spec, expected, yielded, simulator_url) -> None:
    """HTTP errors raise before the first chunk; breaks raise mid-stream after some chunks."""
    ep = fault(
        endpoint(kind, simulator_url, model=endpoint(kind, simulator_url).model + "~tokens=10"),
        spec,
    )
    received: list[ChatChunk] = []
    with pytest.raises(ProviderError) as info:
        async for item in get_adapter(kind).stream(ep, chat(max_tokens=50)):
            received.append(item)
    assert info.value.kind is expected
    if yielded == 0:
        assert received == []
    else:
        assert len(received) >= 1  # the failure came after content started
        if "no_done" not in spec:
            assert stream_finish(received) is None


@pytest.mark.parametrize("kind", KINDS)
async def test_content_filter(kind: str, simulator_url: str) -> None:
    ep = fault(endpoint(kind, simulator_url), "fault=filter")
    adapter = get_adapter(kind)
    if kind in ("azure", "gemini"):  # both refuse the prompt with an error / a prompt block
        with pytest.raises(ProviderError) as info:
            await adapter.complete(ep, chat())
        assert info.value.kind is ErrorKind.CONTENT_FILTER
        assert not info.value.retriable
        with pytest.raises(ProviderError) as info:
            await collect(adapter, ep, chat())
        assert info.value.kind is ErrorKind.CONTENT_FILTER
    else:
        response = await adapter.complete(ep, chat())
        assert response.choices[0].finish_reason == "content_filter"
        chunks = await collect(adapter, ep, chat())
        assert stream_finish(chunks) == "content_filter"


@pytest.mark.parametrize("kind", KINDS)
async def test_context_window_exceeded_automatically(kind: str, simulator_url: str) -> None:
    model = endpoint(kind, simulator_url).model + "~ctx=50"
    ep = endpoint(kind, simulator_url, model=model)
    with pytest.raises(ProviderError) as info:
        await get_adapter(kind).complete(ep, chat(max_tokens=40))  # 18 + 40 > 50
    assert info.value.kind is ErrorKind.CONTEXT_LENGTH
    assert not info.value.retriable
    response = await get_adapter(kind).complete(ep, chat(max_tokens=30))  # 18 + 30 <= 50
    assert response.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------- timeouts and cancellation


@pytest.mark.parametrize("kind", ["openai", "bedrock"])  # the timing code is shared
async def test_hang_times_out(kind: str, simulator_url: str) -> None:
    """No response at all: a stream gives up after first_byte, a whole call after total."""
    ep = fault(endpoint(kind, simulator_url), "fault=hang")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ProviderError) as info:
        await get_adapter(kind).complete(ep, chat(), timeouts=FAST)
    assert info.value.kind is ErrorKind.TIMEOUT
    assert 1.15 <= loop.time() - start < 2.5
    start = loop.time()
    with pytest.raises(ProviderError) as info:
        await collect(get_adapter(kind), ep, chat(), FAST)
    assert info.value.kind is ErrorKind.TIMEOUT
    assert 0.45 <= loop.time() - start < 1.15


@pytest.mark.parametrize("kind", ["openai", "anthropic", "bedrock"])
async def test_slow_first_token_times_out(kind: str, simulator_url: str) -> None:
    ep = fault(endpoint(kind, simulator_url), "ttft_ms=1500")
    with pytest.raises(ProviderError) as info:
        await collect(get_adapter(kind), ep, chat(), FAST)
    assert info.value.kind is ErrorKind.TIMEOUT
    assert info.value.message == "no first chunk in time"
    # The same stream within a generous first-byte budget succeeds.
    ok = Timeouts(connect=5.0, first_byte=5.0, stall=2.0, total=10.0)
    fast_ep = fault(endpoint(kind, simulator_url), "ttft_ms=100")
    chunks = await collect(get_adapter(kind), fast_ep, chat(), ok)
    assert stream_finish(chunks) == "stop"


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_stall_times_out_mid_stream(kind: str, simulator_url: str) -> None:
    ep = fault(endpoint(kind, simulator_url), "fault=stall~stall_ms=1500~after=2")
    received: list[ChatChunk] = []
    with pytest.raises(ProviderError) as info:
        async for item in get_adapter(kind).stream(ep, chat(), timeouts=FAST):
            received.append(item)
    assert info.value.kind is ErrorKind.TIMEOUT
    assert received  # content had started


async def test_connection_refused_is_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ep = EndpointFactory(kind="openai", url=f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderError) as info:
        await get_adapter("openai").complete(ep, chat(), timeouts=FAST)
    assert info.value.kind is ErrorKind.CONNECTION
    assert info.value.retriable


@pytest.mark.parametrize("kind", KINDS)
async def test_closing_the_stream_early_closes_upstream(kind: str) -> None:
    """A client disconnect (aclose) must close the upstream connection at once: the simulator
    sees the connection drop while it still had tokens to send."""
    from gateway.simulator.server import start

    server = await start(port=0)
    try:
        base = endpoint(kind, server.url)
        ep = fault(endpoint(kind, server.url, model=base.model + "~tokens=200"), "token_ms=20")
        stream = get_adapter(kind).stream(
            ep, chat(max_tokens=300), timeouts=Timeouts(connect=5, first_byte=5, stall=5, total=10)
        )
        first = await anext(stream)
        assert first is not None
        streaming = [c for c in server.connections if c.task is not None]
        assert len(streaming) == 1
        await stream.aclose()
        for _ in range(50):
            if not streaming[0].task and streaming[0].closed:
                break
            await asyncio.sleep(0.01)
        assert streaming[0].closed  # the upstream saw the disconnect within 0.5 s
        assert streaming[0].task is None  # and stopped generating
    finally:
        await server.close()
