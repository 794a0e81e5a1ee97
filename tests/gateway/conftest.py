"""Gateway test fixtures: one provider simulator per session (a real HTTP server on port 0,
on its own thread), endpoints pointing at it, and fixture files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.http import aclose_clients
from gateway.simulator.server import Options, run_in_thread

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def simulator_url() -> Iterator[str]:
    url, stop = run_in_thread(port=0, options=Options())
    try:
        yield url
    finally:
        stop()


@pytest.fixture
async def close_clients() -> AsyncIterator[None]:
    """Close the loop's shared httpx client after an async test (each test has its own loop)."""
    yield
    await aclose_clients()


def fixture_bytes(*parts: str) -> bytes:
    return FIXTURES.joinpath(*parts).read_bytes()


def fixture_json(*parts: str) -> Any:
    return json.loads(fixture_bytes(*parts))
