"""Gateway test fixtures: a real uvicorn server on port 0 running the production ASGI app
(``megarouter.asgi.application``) in a background thread, one per test module, and module-scoped
database rows committed for it (flushed when the module ends)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from django.core.cache import cache
from django.core.management import call_command


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
        self.server.should_exit = True
        self.thread.join(timeout=10)


def reset_caches() -> None:
    from orgs.keys import default_resolver
    from routing.catalog import catalog_snapshot_reset

    catalog_snapshot_reset()
    default_resolver.forget()
    cache.clear()  # the test cache: LocMem, or this suite's own Redis database


@pytest.fixture(scope="module")
def committed_db(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Rows created under this fixture are committed (the server thread must see them) and
    flushed when the module ends."""
    with django_db_blocker.unblock():
        reset_caches()
        try:
            yield
        finally:
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
    for item in items:
        if "committed_db" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.django_db)
