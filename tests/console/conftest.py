from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache

from orgs.keys import default_resolver
from routing.catalog import catalog_snapshot_reset
from routing.health import health_store_set
from routing.policies import policy_table_reset
from routing.services import CATALOG_VERSION_CACHE_KEY


def _reset() -> None:
    """Process-wide state that outlives a test's database: key contexts, the catalog
    snapshot and its cached version token, the policy table, the health store."""
    default_resolver.forget()
    catalog_snapshot_reset()
    cache.delete(CATALOG_VERSION_CACHE_KEY)
    policy_table_reset()
    health_store_set(None)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    _reset()
    yield
    _reset()
