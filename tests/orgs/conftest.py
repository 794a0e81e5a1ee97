from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from orgs.keys import default_resolver


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    default_resolver.forget()
    yield
    default_resolver.forget()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def login(api):
    def _login(user):
        api.force_authenticate(user=None)
        api.force_login(user)
        return api

    return _login
