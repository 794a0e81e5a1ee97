"""Failed key attempts are limited per client address (key guessing), in every process that
sees them, through the shared cache; other addresses are unaffected."""

from __future__ import annotations

import secrets

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from gateway.auth import authenticate, guess_guard
from gateway.errors import AuthenticationFailed, RateLimited
from tests.orgs.factories import make_key, make_tree


@pytest.fixture
def raw_key(transactional_db):
    tree = make_tree("guess")
    return make_key(tree.project, tree.owner_membership).raw_key


@pytest.fixture(autouse=True)
def clean_guard():
    guess_guard._blocked.clear()
    yield
    guess_guard._blocked.clear()


def _address() -> str:
    return "10." + ".".join(str(b) for b in secrets.token_bytes(3))


async def _auth(key: str, ip: str):
    return await authenticate({"authorization": f"Bearer {key}"}, ip)


async def test_an_address_is_blocked_after_the_limit_and_others_are_not(raw_key, settings):
    settings.MEGAROUTER_AUTH_FAILURES_PER_MINUTE = 3
    # Fresh addresses each run: the shared cache (Redis) outlives a test.
    attacker, other = _address(), _address()
    wrong = raw_key[:-4] + ("AAAA" if not raw_key.endswith("AAAA") else "BBBB")
    try:
        for _ in range(3):
            with pytest.raises(AuthenticationFailed):
                await _auth(wrong, attacker)
        with pytest.raises(RateLimited) as blocked:
            await _auth(wrong, attacker)
        assert blocked.value.code == "too_many_auth_failures"
        assert 1 <= int(blocked.value.headers["retry-after"]) <= 60
        # Even a valid key from the blocked address is refused before any lookup, so a lucky
        # guess cannot be told apart from a wrong one.
        with pytest.raises(RateLimited):
            await _auth(raw_key, attacker)
        context = await _auth(raw_key, other)
        assert context.key_prefix == raw_key[:16]
        # Another process (a fresh guard) blocks the address at its first failure in the window.
        guess_guard._blocked.clear()
        with pytest.raises(RateLimited):
            await _auth(wrong, attacker)
    finally:
        await sync_to_async(connections.close_all)()


async def test_missing_keys_do_not_count_and_zero_turns_the_limit_off(raw_key, settings):
    settings.MEGAROUTER_AUTH_FAILURES_PER_MINUTE = 1
    ip = _address()
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            await authenticate({}, ip)
    settings.MEGAROUTER_AUTH_FAILURES_PER_MINUTE = 0
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            await _auth("mrk_notarealkey0_" + "x" * 43, ip)
