from __future__ import annotations

import uuid

import pytest
from django.conf import settings as django_settings

from billing.admission import reset_backend
from billing.admission.db import DatabaseBackend
from orgs.keys import default_resolver


@pytest.fixture(autouse=True)
def _fresh_caches():
    default_resolver.forget()
    yield
    default_resolver.forget()
    reset_backend(None)


def redis_backend(prefix: str | None = None):
    from billing.admission.redis import RedisBackend

    return RedisBackend(prefix=prefix or f"mrtest:{uuid.uuid4().hex[:10]}")


def redis_cleanup(backend) -> None:
    keys = list(backend.sync.scan_iter(match=f"{backend.prefix}:*", count=1000))
    if keys:
        backend.sync.delete(*keys)
    backend.sync.close()


@pytest.fixture(params=["db", "redis"])
def backend(request, settings):
    """Each admission backend, installed as the process's backend (the contract suite)."""
    if request.param == "redis":
        if not django_settings.REDIS_URL:
            pytest.skip("REDIS_URL is not set (embedded mode)")
        b = redis_backend()
        settings.BILLING_REDIS_PREFIX = b.prefix
        reset_backend(b)
        yield b
        redis_cleanup(b)
    else:
        b = DatabaseBackend()
        reset_backend(b)
        yield b


@pytest.fixture
def rbackend(settings):
    """The Redis backend alone (skipped in the embedded mode)."""
    if not django_settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set (embedded mode)")
    b = redis_backend()
    settings.BILLING_REDIS_PREFIX = b.prefix
    reset_backend(b)
    yield b
    redis_cleanup(b)
