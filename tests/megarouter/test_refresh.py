"""Stale-while-revalidate (megarouter/refresh.py): a warm request never waits for a cache's
periodic re-check, even when the re-check hangs on an unreachable database, and a hung
re-check does not hold Django's sync thread (the async cache API and cold key loads use it)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import sync_to_async

from megarouter import refresh
from routing import catalog


@pytest.fixture
def pool(settings):
    settings.MEGAROUTER_REFRESH_POOL = True
    yield


def test_a_hung_refresh_holds_neither_the_request_nor_the_sync_thread(pool):
    release = threading.Event()
    calls = []

    def hung_load():
        calls.append(time.monotonic())
        release.wait(5)
        return "fresh"

    async def go():
        refresh.in_background("t-hung", hung_load)
        refresh.in_background("t-hung", hung_load)  # single flight: not started twice
        started = time.perf_counter()
        assert await sync_to_async(lambda: "sync thread free", thread_sensitive=True)() == (
            "sync thread free"
        )
        waited = time.perf_counter() - started
        await asyncio.sleep(0.05)
        release.set()
        task = refresh._running.get("t-hung")
        if task is not None:
            assert await task == "fresh"
        return waited

    waited = asyncio.run(go())
    assert waited < 0.5
    assert len(calls) == 1
    assert "t-hung" not in refresh._running


def test_a_failed_refresh_is_logged_and_retried_later(pool, caplog):
    def broken():
        raise ConnectionError("database unreachable")

    async def go():
        refresh.in_background("t-broken", broken)
        await asyncio.sleep(0.2)
        assert "t-broken" not in refresh._running  # the next request may try again

    asyncio.run(go())
    assert "background refresh failed" in caplog.text


def test_a_stale_catalog_snapshot_is_served_at_once(pool, monkeypatch):
    release = threading.Event()
    fresh = object()

    def slow_check(snapshot):
        release.wait(5)
        return True

    stale = object()
    monkeypatch.setattr(catalog._holder, "value", stale)
    monkeypatch.setattr(catalog._holder, "checked_at", time.monotonic() - 60)
    monkeypatch.setattr(catalog._holder, "is_stale", slow_check)
    monkeypatch.setattr(catalog._holder, "build", lambda: fresh)

    async def go():
        started = time.perf_counter()
        got = await catalog.acatalog_snapshot()
        waited = time.perf_counter() - started
        release.set()
        task = refresh._running.get("catalog")
        if task is not None:
            assert await task is fresh
        return got, waited

    got, waited = asyncio.run(go())
    assert got is stale
    assert waited < 0.05
