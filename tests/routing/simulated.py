"""Shared pieces for the routing engine tests: a provider simulator (a real HTTP server on
port 0, one per session), health stores (Redis db of the run in services mode, in-process
otherwise), and attempts that call the real adapters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from django.conf import settings

from gateway.http import Timeouts, aclose_clients
from gateway.providers.adapters import get_adapter
from gateway.providers.types import ChatChunk, ChatRequest, ChatResponse, Endpoint, Message
from gateway.simulator.server import Options, run_in_thread
from routing.failover import AttemptBudget, stream_start
from routing.health import HealthConfig, HealthStore, LocalHealth, RedisHealth


@pytest.fixture(scope="session")
def simulator_url() -> Iterator[str]:
    url, stop = run_in_thread(port=0, options=Options())
    try:
        yield url
    finally:
        stop()


def make_store(config: HealthConfig | None = None) -> HealthStore:
    config = config or HealthConfig()
    if settings.REDIS_URL:
        return RedisHealth(
            settings.REDIS_URL, key=f"test:routing:health:{uuid.uuid4().hex}", config=config
        )
    return LocalHealth(config)


@pytest.fixture
def stores() -> Iterator[list[HealthStore]]:
    """Call ``stores.append(make_store(...))`` to have a store cleared after the test."""
    made: list[HealthStore] = []
    yield made
    for store in made:
        store.clear()


@pytest.fixture
async def close_clients() -> AsyncIterator[None]:
    yield
    await aclose_clients()


def fault_id() -> str:
    """A fresh fault-counter id (the simulator's counters are per id, for the session)."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class SimCandidate:
    """What run_with_failover needs, plus the endpoint the attempt calls."""

    deployment_id: int
    deployment: str
    model_id: str
    provider: str
    endpoint: Endpoint
    context_window: int | None = 128_000
    extra: dict[str, str] = field(default_factory=dict)
    timeouts: dict[str, float] = field(default_factory=dict)  # per model / deployment


def candidate(
    url: str,
    deployment_id: int,
    model: str,
    *,
    provider: str = "sim-a",
    model_id: str | None = None,
    context_window: int | None = 128_000,
    base_url: str | None = None,
) -> SimCandidate:
    """An OpenAI-compatible deployment on the simulator; ``model`` may carry ``~knobs``."""
    return SimCandidate(
        deployment_id=deployment_id,
        deployment=f"dep-{deployment_id}",
        model_id=model_id or f"{provider}/{model.partition('~')[0]}",
        provider=provider,
        endpoint=Endpoint(
            kind="openai",
            base_url=base_url or f"{url}/openai/v1",
            model=model,
            api_key="sk-sim",
            deployment_id=deployment_id,
        ),
        context_window=context_window,
    )


def chat(text: str = "Say hello", *, max_tokens: int | None = None, stream: bool = False):
    return ChatRequest(
        messages=[Message(role="user", content=text)],
        max_tokens=max_tokens,
        stream=stream,
        include_usage=stream,
    )


def timeouts(budget: AttemptBudget) -> Timeouts:
    return Timeouts(
        connect=min(2.0, budget.ttft_timeout_s),
        first_byte=budget.ttft_timeout_s,
        stall=budget.stall_timeout_s,
        total=budget.attempt_timeout_s,
    )


def complete_attempt(request: ChatRequest):
    async def attempt(c: SimCandidate, budget: AttemptBudget) -> ChatResponse:
        return await get_adapter(c.endpoint.kind).complete(
            c.endpoint, request, timeouts=timeouts(budget)
        )

    return attempt


def has_content(chunk: ChatChunk) -> bool:
    return any(choice.delta.content or choice.delta.tool_calls for choice in chunk.choices) or (
        chunk.usage is not None
    )


def stream_attempt(request: ChatRequest):
    async def attempt(
        c: SimCandidate, budget: AttemptBudget
    ) -> tuple[list[ChatChunk], AsyncIterator[ChatChunk]]:
        stream = get_adapter(c.endpoint.kind).stream(c.endpoint, request, timeouts=timeouts(budget))
        return await stream_start(stream, has_content)

    return attempt


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(ch.delta.content or "" for chunk in chunks for ch in chunk.choices)
