"""Live health: EWMAs, error rate, in-flight, batching and sharing between processes (two
RedisHealth instances on one key stand for two gateway processes)."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings

from routing.health import (
    DeploymentStats,
    HealthConfig,
    LocalHealth,
    RedisHealth,
    health_store,
    health_store_set,
)

BACKENDS = ["local", "redis"]


def _new(kind: str, config: HealthConfig, key: str | None = None):
    if kind == "local":
        return LocalHealth(config)
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set (embedded mode)")
    return RedisHealth(
        settings.REDIS_URL, key=key or f"test:health:{uuid.uuid4().hex}", config=config
    )


@pytest.fixture
def make(stores):
    def _make(kind: str, key: str | None = None, **config):
        store = _new(kind, HealthConfig(**{"refresh_interval": 0.0, **config}), key)
        stores.append(store)
        return store

    return _make


@pytest.mark.parametrize("kind", BACKENDS)
def test_ewma_of_latency_ttft_and_tokens_per_second(kind, make):
    store = make(kind, alpha=0.5)
    store.record(7, ok=True, ttft_ms=100.0, latency_ms=1000.0, tokens_per_s=50.0)
    store.flush()
    stats = store.view(7)
    assert (stats.ttft_ms, stats.latency_ms, stats.tokens_per_s) == (100.0, 1000.0, 50.0)
    store.record(7, ok=True, ttft_ms=200.0, latency_ms=3000.0, tokens_per_s=150.0)
    store.flush()
    stats = store.view(7)
    assert (stats.ttft_ms, stats.latency_ms, stats.tokens_per_s) == (150.0, 2000.0, 100.0)
    assert stats.samples == 2
    assert stats.error_rate == 0.0


@pytest.mark.parametrize("kind", BACKENDS)
def test_error_rate_is_an_ewma_of_failures(kind, make):
    store = make(kind, alpha=0.5, failures_to_open=100)
    store.record(1, ok=False)  # a new deployment starts at 0
    assert store.view(1).error_rate == 0.5
    store.record(1, ok=False)
    assert store.view(1).error_rate == 0.75
    store.record(1, ok=True)
    store.flush()
    assert store.view(1).error_rate == 0.375


@pytest.mark.parametrize("kind", BACKENDS)
def test_timings_only_record_counts_nothing(kind, make):
    store = make(kind)
    store.record(3, ok=None, ttft_ms=80.0)
    store.flush()
    stats = store.view(3)
    assert stats.samples == 0
    assert stats.ttft_ms == 80.0
    assert stats.consecutive_failures == 0


@pytest.mark.parametrize("kind", BACKENDS)
def test_in_flight(kind, make):
    store = make(kind)
    store.started(5)
    store.started(5)
    store.finished(5)
    store.flush()
    assert store.view(5).in_flight == 1
    store.finished(5)
    store.finished(5)  # never below zero
    store.flush()
    assert store.view(5).in_flight == 0


def test_redis_batches_successes_and_shares_them_across_processes(make):
    key = f"test:health:{uuid.uuid4().hex}"
    a = make("redis", key=key, alpha=0.5, flush_interval=60.0)
    b = make("redis", key=key, alpha=0.5)
    a.record(9, ok=True, latency_ms=100.0)
    a.record(9, ok=True, latency_ms=300.0)
    assert b.view(9) is None  # buffered in process a
    a.flush()
    stats = b.view(9)
    assert stats.latency_ms == 200.0  # the batch's mean, the first samples
    assert stats.samples == 2
    # a batch of two samples at alpha 0.5 weighs the old value by 0.5^2
    a.record(9, ok=True, latency_ms=100.0)
    a.record(9, ok=True, latency_ms=100.0)
    a.flush()
    assert b.view(9).latency_ms == 125.0


def test_redis_failures_are_written_through_at_once(make):
    key = f"test:health:{uuid.uuid4().hex}"
    a = make("redis", key=key, flush_interval=60.0, alpha=0.5)
    b = make("redis", key=key)
    a.record(4, ok=False)
    stats = b.view(4)
    assert stats.consecutive_failures == 1
    assert stats.error_rate == 0.5


def test_redis_view_is_cached_between_refreshes(make):
    key = f"test:health:{uuid.uuid4().hex}"
    writer = make("redis", key=key)
    reader = _new("redis", HealthConfig(refresh_interval=60.0), key)
    writer.record(2, ok=False)
    assert reader.view(2).consecutive_failures == 1  # first read loads the view
    writer.record(2, ok=False)
    assert reader.view(2).consecutive_failures == 1  # not refreshed yet: no I/O
    reader._view_at = 0.0
    assert reader.view(2).consecutive_failures == 2


def test_pack_round_trip():
    stats = DeploymentStats(
        state=2,
        consecutive_failures=3,
        open_until=1.5,
        trial_until=2.25,
        window_start=1.0,
        window_total=9,
        window_failures=4,
        samples=12,
        ttft_ms=None,
        latency_ms=12.5,
        tokens_per_s=None,
        error_rate=0.125,
        in_flight=2,
    )
    assert DeploymentStats.unpack(stats.pack()) == stats
    assert stats.public()["state"] == "half_open"


def test_default_store_follows_settings():
    health_store_set(None)
    try:
        store = health_store()
        assert isinstance(store, RedisHealth if settings.REDIS_URL else LocalHealth)
        assert store is health_store()
        assert store.config.refresh_interval == 0.25
    finally:
        health_store_set(None)


def test_redis_outage_falls_back_to_in_process_health_without_failing():
    """Health is advisory: with Redis unreachable, outcomes still count (per process), the
    breaker still opens and a trial can be claimed, and no call raises."""
    from routing.health import OPEN, RedisHealth

    store = RedisHealth("redis://127.0.0.1:1/0", key="mr:test:dead")  # nothing listens there
    cfg = store.config
    assert store.view(7) is None  # the first read finds Redis down
    for _ in range(cfg.failures_to_open):
        store.record(7, ok=False, latency_ms=5.0)
    stats = store.view(7)
    assert stats is not None and stats.state == OPEN
    assert stats.consecutive_failures == cfg.failures_to_open
    store.started(7)
    store.finished(7)
    assert 7 in store.snapshot()
    store.flush()
