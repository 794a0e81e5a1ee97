from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache

from routing.catalog import catalog_snapshot_reset
from routing.services import CATALOG_VERSION_CACHE_KEY


@pytest.fixture(autouse=True)
def _fresh_catalog_snapshot() -> Iterator[None]:
    """Each test starts without a snapshot or a cached version token (the database is rolled
    back between tests, the process-wide snapshot and the cache are not)."""
    catalog_snapshot_reset()
    cache.delete(CATALOG_VERSION_CACHE_KEY)
    yield
    catalog_snapshot_reset()
    cache.delete(CATALOG_VERSION_CACHE_KEY)


# The routing engine's fixtures (provider simulator, health stores): tests/routing/simulated.py
from tests.routing.simulated import close_clients, simulator_url, stores  # noqa: E402, F401
