"""Bounded revalidation (megarouter/refresh.py): a change made while a worker was idle applies
to its next request; a re-check that hangs on an unreachable database holds a request no
longer than MEGAROUTER_REFRESH_WAIT_S, and does not hold Django's sync thread (the async cache
API and cold key loads use it)."""

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


def _stale_snapshot(monkeypatch, check, build):
    stale = object()
    monkeypatch.setattr(catalog._holder, "value", stale)
    monkeypatch.setattr(catalog._holder, "checked_at", time.monotonic() - 60)  # an idle worker
    monkeypatch.setattr(catalog._holder, "is_stale", check)
    monkeypatch.setattr(catalog._holder, "build", build)
    return stale


def test_a_change_made_while_the_worker_was_idle_applies_to_its_next_request(pool, monkeypatch):
    fresh = object()
    _stale_snapshot(monkeypatch, lambda snapshot: True, lambda: fresh)

    async def go():
        return await catalog.acatalog_snapshot()

    assert asyncio.run(go()) is fresh


def test_a_hung_recheck_holds_a_request_no_longer_than_the_bound(pool, monkeypatch, settings):
    settings.MEGAROUTER_REFRESH_WAIT_S = 0.2
    release = threading.Event()
    fresh = object()

    def slow_check(snapshot):
        release.wait(5)
        return True

    stale = _stale_snapshot(monkeypatch, slow_check, lambda: fresh)

    async def go():
        started = time.perf_counter()
        got = await catalog.acatalog_snapshot()
        waited = time.perf_counter() - started
        release.set()
        task = refresh._running.get("catalog")
        if task is not None:
            assert await task is fresh  # the refresh went on and finished in the background
        return got, waited

    got, waited = asyncio.run(go())
    assert got is stale
    assert 0.2 <= waited < 0.6
    assert catalog._holder.value is fresh
