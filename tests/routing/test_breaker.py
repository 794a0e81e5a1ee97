"""The circuit breaker on both backends: consecutive failures, error rate over a window,
cool-down, one atomic half-open trial, recovery."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.conf import settings

from routing.breaker import breaker_allow, breaker_is_open, breaker_state
from routing.health import HealthConfig, LocalHealth, RedisHealth

BACKENDS = ["local", "redis"]


@pytest.fixture
def make(stores):
    def _make(kind: str, key: str | None = None, **config):
        cfg = HealthConfig(**{"refresh_interval": 0.0, **config})
        if kind == "local":
            store = LocalHealth(cfg)
        else:
            if not settings.REDIS_URL:
                pytest.skip("REDIS_URL is not set (embedded mode)")
            store = RedisHealth(
                settings.REDIS_URL, key=key or f"test:breaker:{uuid.uuid4().hex}", config=cfg
            )
        stores.append(store)
        return store

    return _make


@pytest.mark.parametrize("kind", BACKENDS)
def test_opens_after_n_consecutive_failures(kind, make):
    store = make(kind, failures_to_open=3, cooldown_s=30)
    store.record(1, ok=False)
    store.record(1, ok=False)
    store.record(1, ok=True)  # resets the run
    store.record(1, ok=False)
    store.record(1, ok=False)
    store.flush()
    assert breaker_state(1, store=store) == "closed"
    assert breaker_allow(1, store=store) is True
    store.record(1, ok=False)
    assert breaker_state(1, store=store) == "open"
    assert breaker_is_open(1, store=store) is True
    assert breaker_allow(1, store=store) is False


@pytest.mark.parametrize("kind", BACKENDS)
def test_opens_on_error_rate_over_the_window(kind, make):
    store = make(kind, failures_to_open=100, error_rate_to_open=0.5, min_requests=10)
    for i in range(9):
        store.record(2, ok=i % 2 == 0)  # ok, fail, ok, ... : 5 ok, 4 failed
    store.flush()
    assert breaker_state(2, store=store) == "closed"
    store.record(2, ok=False)  # 10 requests, 5 failed: 50 %
    assert breaker_state(2, store=store) == "open"


@pytest.mark.parametrize("kind", BACKENDS)
def test_window_expires(kind, make):
    store = make(kind, failures_to_open=100, error_rate_to_open=0.5, min_requests=4, window_s=1)
    store.record(3, ok=False)
    store.record(3, ok=False)
    store.record(3, ok=True)
    store.flush()
    stats = store.view(3)
    assert (stats.window_total, stats.window_failures) == (3, 2)
    time.sleep(1.05)
    store.record(3, ok=False)  # a new window: 1 request, below min_requests
    stats = store.view(3)
    assert (stats.window_total, stats.window_failures) == (1, 1)
    assert stats.state == 0


@pytest.mark.parametrize("kind", BACKENDS)
def test_half_open_single_trial_then_close_on_success(kind, make):
    store = make(kind, failures_to_open=1, cooldown_s=0.05)
    store.record(4, ok=False)
    assert breaker_allow(4, store=store) is False
    time.sleep(0.06)
    assert breaker_is_open(4, store=store) is False  # a trial is due
    assert breaker_allow(4, store=store) is True  # this caller holds the trial
    assert breaker_state(4, store=store) == "half_open"
    assert breaker_allow(4, store=store) is False  # one trial at a time
    store.record(4, ok=True)
    assert breaker_state(4, store=store) == "closed"
    assert store.view(4).consecutive_failures == 0
    assert breaker_allow(4, store=store) is True


@pytest.mark.parametrize("kind", BACKENDS)
def test_failed_trial_reopens_for_a_new_cooldown(kind, make):
    store = make(kind, failures_to_open=1, cooldown_s=0.05)
    store.record(5, ok=False)
    time.sleep(0.06)
    assert breaker_allow(5, store=store) is True
    before = time.time()
    store.record(5, ok=False)
    stats = store.view(5)
    assert stats.state == 1
    assert before + 0.05 <= stats.open_until <= time.time() + 0.05
    assert breaker_allow(5, store=store) is False


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_trial_that_never_reports_frees_the_slot(kind, make):
    store = make(kind, failures_to_open=1, cooldown_s=0.0, trial_timeout_s=0.05)
    store.record(6, ok=False)
    assert breaker_allow(6, store=store) is True
    assert breaker_allow(6, store=store) is False
    time.sleep(0.06)
    assert breaker_allow(6, store=store) is True


def test_trial_claim_is_atomic_across_processes(make):
    key = f"test:breaker:{uuid.uuid4().hex}"
    stores = [make("redis", key=key, failures_to_open=1, cooldown_s=0.0) for _ in range(8)]
    stores[0].record(7, ok=False)
    for s in stores:
        assert s.view(7).state == 1
    results: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def claim(s):
        barrier.wait()
        results.append(breaker_allow(7, store=s))

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_open_breaker_is_checked_without_io(make):
    key = f"test:breaker:{uuid.uuid4().hex}"
    store = make("redis", key=key, failures_to_open=1, cooldown_s=30, refresh_interval=60.0)
    store.record(8, ok=False)
    assert store.view(8).state == 1
    client, store._redis = store._redis, None  # any Redis call now fails loudly
    try:
        assert breaker_allow(8, store=store) is False
        assert breaker_is_open(8, store=store) is True
    finally:
        store._redis = client


def test_opened_in_one_process_is_seen_by_another(make):
    key = f"test:breaker:{uuid.uuid4().hex}"
    a = make("redis", key=key, failures_to_open=2, cooldown_s=30)
    b = make("redis", key=key, failures_to_open=2, cooldown_s=30)
    a.record(9, ok=False)
    b.record(9, ok=False)  # the count is shared: the second failure anywhere opens it
    assert breaker_state(9, store=a) == "open"
    assert breaker_state(9, store=b) == "open"
