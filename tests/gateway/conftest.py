"""Gateway test fixtures: one provider simulator per session (a real HTTP server on port 0,
on its own thread), endpoints pointing at it, and fixture files; for the /v1 API tests, a real
uvicorn server on port 0 running the production ASGI app (``megarouter.asgi.application``) in a
background thread, one per test module, and module-scoped database rows committed for it
(flushed when the module ends)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from django.core.cache import cache
from django.core.management import call_command

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


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="asyncio",
            http="h11",
            lifespan="on",
            log_level="warning",
            access_log=False,
            # A module's client keeps one connection for all its tests; uvicorn's default 5 s
            # idle close can land just as a slow test sends its next request on it, which the
            # client sees as "Server disconnected". Tests run well inside this.
            timeout_keep_alive=120,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        from asgiref.sync import SyncToAsync
        from django.db import connections

        self.server.should_exit = True
        self.thread.join(timeout=10)
        # The server's cold-path queries ran on asgiref's shared sync thread: close its
        # connections there, or PostgreSQL refuses to drop the test database.
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


def reset_caches() -> None:
    from orgs.keys import default_resolver
    from routing.catalog import catalog_snapshot_reset
    from routing.health import health_store
    from routing.ratelimit import deployment_limiter
    from routing.stickiness import cache_map

    catalog_snapshot_reset()
    default_resolver.forget()
    cache.clear()  # the test cache: LocMem, or this suite's own Redis database
    # Live health, breakers, rate limits and conversations' cache holders are keyed by
    # deployment id, which a flushed database reuses.
    health_store().clear()
    deployment_limiter().clear()
    cache_map().clear()


@pytest.fixture(scope="module")
def committed_db(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Rows created under this fixture are committed (the server thread must see them) and
    flushed when the module ends."""
    from django.db import connection

    with django_db_blocker.unblock():
        reset_caches()
        # SQLite: the tests' own transactions start deferred (a WAL reader blocks no one), not
        # BEGIN IMMEDIATE, which would hold the write lock that the server thread's admission
        # writes need for as long as a test runs.
        mode = getattr(connection, "transaction_mode", None)
        if connection.vendor == "sqlite":
            connection.ensure_connection()
            connection.transaction_mode = None
        try:
            yield
        finally:
            if connection.vendor == "sqlite":
                connection.transaction_mode = mode
            call_command("flush", interactive=False, verbosity=0)
            reset_caches()


@pytest.fixture(scope="module")
def gateway_server(committed_db: None) -> Iterator[ServerThread]:
    from megarouter.asgi import application

    with ServerThread(application) as server:
        yield server


def run(coro: Any) -> Any:
    with contextlib.closing(asyncio.new_event_loop()) as loop:
        return loop.run_until_complete(coro)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest-django only creates the test database when a collected test is marked for it.
    # Modules that mark themselves (e.g. transaction=True) keep their own marker.
    for item in items:
        if "committed_db" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "django_db"
        ):
            item.add_marker(pytest.mark.django_db)


class SimWorld:
    """A tenant with keys and a small catalog whose deployments point at a live simulator."""

    def __init__(self, sim_url: str) -> None:
        from tests.gateway import factories as f

        self.sim_url = sim_url
        self.tenant = f.tenant_create()
        self.key = f.api_key_create(self.tenant)
        self.openai_only_key = f.api_key_create(self.tenant, allowed_models=["openai/*"])
        openai_url = f"{sim_url}/openai/v1"
        openai = f.provider_create("openai", "openai", openai_url)
        anthropic = f.provider_create("anthropic", "anthropic", f"{sim_url}/anthropic")
        credential = f.credential_create()
        self.models = {
            "gpt": f.model_create(openai, "gpt-sim"),
            "flaky": f.model_create(openai, "gpt-flaky"),
            "broken": f.model_create(openai, "gpt-broken"),
            "cutter": f.model_create(openai, "gpt-cutter"),
            "slow": f.model_create(openai, "gpt-slow"),
            "limited": f.model_create(openai, "gpt-limited"),
            "hang": f.model_create(openai, "gpt-hang"),
            "cheap": f.model_create(
                openai,
                "gpt-cheap",
                price_in=f.Decimal("0.0000001"),
                price_out=f.Decimal("0.0000004"),
                quality_tier=2,
            ),
            "claude": f.model_create(anthropic, "claude-sim", quality_tier=4),
            "embed": f.model_create(openai, "embed-sim", mode="embedding", price_out=f.Decimal(0)),
        }
        m = self.models

        def deploy(
            model: Any, name: str, upstream: str, priority: int = 0, base: str = openai_url
        ) -> None:
            f.deployment_create(
                model,
                name=name,
                base_url=base,
                upstream_name=upstream,
                priority=priority,
                credential=credential,
            )

        deploy(m["gpt"], "sim-gpt", "gpt-sim")
        deploy(m["flaky"], "sim-flaky-a", "gpt-sim~fault=500", priority=0)
        deploy(m["flaky"], "sim-flaky-b", "gpt-sim~fault=429~retry_after=1", priority=1)
        deploy(m["flaky"], "sim-flaky-c", "gpt-sim", priority=2)
        deploy(m["broken"], "sim-broken-a", "gpt-sim~fault=503", priority=0)
        deploy(m["broken"], "sim-broken-b", "gpt-sim~fault=500", priority=1)
        deploy(m["cutter"], "sim-cutter", "gpt-sim~fault=cut~after=3")
        deploy(m["slow"], "sim-slow", "gpt-sim~token_ms=40~tokens=200")
        deploy(m["cheap"], "sim-cheap", "gpt-cheap")
        deploy(m["limited"], "sim-limited", "gpt-sim~fault=429~retry_after=7")
        deploy(m["hang"], "sim-hang", "gpt-sim~fault=hang")
        deploy(m["claude"], "sim-claude", "claude-sim", base=f"{sim_url}/anthropic")
        deploy(m["embed"], "sim-embed", "embed-sim")
        reset_caches()

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def sim_world(committed_db: None, simulator_url: str) -> SimWorld:
    return SimWorld(simulator_url)
