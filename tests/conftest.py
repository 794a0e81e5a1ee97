"""Shared fixtures. Tests run against the embedded default, or against PostgreSQL and Redis
when DATABASE_URL / REDIS_URL are set (as .ci/run does)."""

from __future__ import annotations

import pytest
from django.conf import settings


@pytest.fixture
def redis_url() -> str:
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set (embedded mode)")
    return settings.REDIS_URL
