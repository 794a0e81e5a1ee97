"""Shared fixtures. Tests run against the embedded default, or against PostgreSQL and Redis
when DATABASE_URL / REDIS_URL are set (as .ci/run does)."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings


@pytest.fixture
def redis_url() -> str:
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set (embedded mode)")
    return settings.REDIS_URL


@pytest.fixture(scope="session", autouse=True)
def _no_heartbeat_thread():
    """Gateway processes' heartbeats are a thread of their own writing every few seconds; the
    tests that need them beat by hand (tests/billing/test_crash.py)."""
    settings.BILLING_HEARTBEATS = False
    yield


@pytest.fixture(scope="session", autouse=True)
def _no_in_process_probes():
    """A test server probing its deployments on its own would move breakers under the tests'
    feet; tests/gateway/test_probes.py runs the in-process probes by hand."""
    settings.ROUTING_PROBES_IN_PROCESS = False
    yield


@pytest.fixture(scope="session", autouse=True)
def _refresh_on_the_test_thread():
    """Background cache refreshes run where the test's transaction is (megarouter/refresh.py);
    tests/megarouter/test_refresh.py covers the thread pool."""
    settings.MEGAROUTER_REFRESH_POOL = False
    yield


@pytest.fixture(scope="session", autouse=True)
def _failure_counts_inline():
    """Failed-request counts are written before the response (not every 5 s by the flusher
    thread), so a test reads them right after the request; tests/gateway/test_api_failures.py
    covers the flusher."""
    settings.BILLING_FAILURES_FLUSH_SECONDS = 0
    yield


@pytest.fixture(scope="session", autouse=True)
def _billing_redis_prefix():
    """Admission counters of this test session live under their own Redis prefix (removed at
    the end), so organization ids reused by a later run never meet stale counters."""
    if not settings.REDIS_URL:
        yield
        return
    import uuid

    import redis

    from billing.admission import reset_backend

    prefix = f"mrtest:{uuid.uuid4().hex[:10]}"
    settings.BILLING_REDIS_PREFIX = prefix
    # Each request commits its own rows, inside the test's transaction; the batched writer
    # (production's default) commits from its own thread and has its own tests.
    settings.BILLING_USAGE_WRITE = "inline"
    reset_backend(None)
    yield
    reset_backend(None)
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(autouse=True)
def _fresh_login_limits(settings) -> None:
    """Every test counts failed logins afresh (the test client's address is always 127.0.0.1,
    and in the services mode the counters live in the shared Redis): password logins in the
    console's tests, single sign-on refusals in the identity app's."""
    settings.MEGAROUTER_LOGIN_FAILURE_PREFIX = f"login-fail-test:{uuid.uuid4().hex[:10]}"
