"""The shared outbound client module: one client per event loop, closing, transports, and
concurrent calls through it."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from django.test import override_settings

from gateway import http
from gateway.providers.adapters import get_adapter
from tests.gateway.factories import EndpointFactory, chat


async def test_one_client_per_loop_and_close() -> None:
    client = http.get_client()
    assert http.get_client() is client
    assert not client.is_closed
    await http.aclose_clients()
    assert client.is_closed
    fresh = http.get_client()
    assert fresh is not client
    await http.aclose_clients()


def test_each_loop_gets_its_own_client() -> None:
    seen: list[httpx.AsyncClient] = []

    async def grab() -> None:
        seen.append(http.get_client())
        await http.aclose_clients()

    threads = [threading.Thread(target=lambda: asyncio.run(grab())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 2 and seen[0] is not seen[1]


def test_transport_choice() -> None:
    assert http.make_transport("httpx") is None
    assert type(http.make_transport("aiohttp")).__name__ == "AiohttpTransport"
    with pytest.raises(ValueError, match="unknown PROVIDER_HTTP_TRANSPORT"):
        http.make_transport("curl")
    with override_settings(PROVIDER_HTTP_TRANSPORT="httpx"):
        assert http.make_transport() is None


def test_timeouts_from_settings() -> None:
    with override_settings(PROVIDER_CONNECT_TIMEOUT=1.5, ROUTING_TTFT_TIMEOUT_S=7,
                           ROUTING_STALL_TIMEOUT_S=3, ROUTING_ATTEMPT_TIMEOUT_S=90):  # fmt: skip
        timeouts = http.Timeouts.default()
    assert (timeouts.connect, timeouts.first_byte, timeouts.stall, timeouts.total) == (
        1.5,
        7,
        3,
        90,
    )
    assert timeouts.httpx_timeout(stream=True).read == 7
    assert timeouts.httpx_timeout(stream=False).read == 90
    assert timeouts.with_(stall=1).stall == 1


@pytest.mark.usefixtures("close_clients")
@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_concurrent_calls_share_the_pool(transport: str, simulator_url: str) -> None:
    loop = asyncio.get_running_loop()
    http._clients[loop] = http.new_client(transport=http.make_transport(transport))
    kinds = ["openai", "azure", "anthropic", "gemini", "bedrock"]

    async def call(i: int) -> str:
        kind = kinds[i % len(kinds)]
        ep = EndpointFactory(kind=kind, url=simulator_url)
        response = await get_adapter(kind).complete(ep, chat(f"question {i}", max_tokens=30))
        return response.choices[0].finish_reason or ""

    results = await asyncio.gather(*(call(i) for i in range(64)))
    assert results == ["stop"] * 64
