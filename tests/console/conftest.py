from __future__ import annotations

import pytest

from orgs.keys import default_resolver


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    default_resolver.forget()
    yield
    default_resolver.forget()
