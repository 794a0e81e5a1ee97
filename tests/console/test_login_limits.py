"""Console login rate limits (orgs/login_limits.py, docs/identity.md): failures counted per
account and per client address over the password and the MFA step, the refusal (429, with
its message, even for the right password), the window's end, and the reset on success."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import struct

import pytest
import time_machine
from django.test import Client

from orgs import mfa
from tests.console.factories import make_tenant

pytestmark = pytest.mark.django_db

PASSWORD = "a long pass phrase 42"
BLOCKED_ACCOUNT = "Too many failed logins for this account. Try again in 15 minutes"
BLOCKED_ADDRESS = "Too many failed logins from this address. Try again in"


@pytest.fixture(autouse=True)
def _fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def clock():
    with time_machine.travel(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC), tick=False) as t:
        yield t


@pytest.fixture
def user():
    user = make_tenant("acme").developer
    user.set_password(PASSWORD)
    user.save()
    return user


def attempt(client: Client, username: str, password: str):
    return client.post("/login/", {"username": username, "password": password})


def from_ip(ip: str) -> Client:
    return Client(REMOTE_ADDR=ip)


def test_ten_wrong_passwords_block_the_account_even_with_the_right_one(user, clock):
    client = from_ip("198.51.100.1")
    for _ in range(9):
        assert attempt(client, user.username, "wrong").status_code == 200
    response = attempt(client, user.username, "wrong")  # the tenth
    assert response.status_code == 429
    assert BLOCKED_ACCOUNT in response.content.decode()
    # the right password, from another address, with other letter case: still refused
    response = attempt(from_ip("203.0.113.9"), user.username.upper(), PASSWORD)
    assert response.status_code == 429
    response = attempt(from_ip("203.0.113.9"), user.username, PASSWORD)
    assert response.status_code == 429 and "_auth_user_id" not in client.session
    clock.shift(14 * 60)
    response = attempt(from_ip("203.0.113.9"), user.username, PASSWORD)
    assert "Try again in 1 minute," in response.content.decode()
    clock.shift(60)  # the window (15 minutes from its first failure) is over
    assert attempt(from_ip("203.0.113.9"), user.username, PASSWORD)["Location"] == "/"


def test_a_successful_login_resets_the_account_count(user, clock):
    client = from_ip("198.51.100.1")
    for _ in range(9):
        attempt(client, user.username, "wrong")
    assert attempt(from_ip("198.51.100.2"), user.username, PASSWORD)["Location"] == "/"
    other = from_ip("198.51.100.3")
    for _ in range(9):
        assert attempt(other, user.username, "wrong").status_code == 200
    assert attempt(from_ip("198.51.100.4"), user.username, PASSWORD)["Location"] == "/"


def test_ten_failures_from_one_address_block_it_for_every_account(user, clock):
    crowded = from_ip("192.0.2.50")
    for n in range(10):
        attempt(crowded, f"guess-{n}", "wrong")
    response = attempt(crowded, user.username, PASSWORD)
    assert response.status_code == 429
    assert BLOCKED_ADDRESS in response.content.decode()
    # the account itself is not blocked: from another address it logs in
    assert attempt(from_ip("192.0.2.51"), user.username, PASSWORD)["Location"] == "/"
    # and that success does not clear the address's failures
    assert attempt(crowded, user.username, PASSWORD).status_code == 429


def test_a_limit_of_zero_turns_it_off(user, clock, settings):
    settings.MEGAROUTER_LOGIN_FAILURES_PER_ACCOUNT = 0
    settings.MEGAROUTER_LOGIN_FAILURES_PER_IP = 0
    client = from_ip("198.51.100.1")
    for _ in range(12):
        assert attempt(client, user.username, "wrong").status_code == 200
    assert attempt(client, user.username, PASSWORD)["Location"] == "/"


def _totp(key: bytes, at: dt.datetime) -> str:
    mac = hmac.new(key, struct.pack(">Q", int(at.timestamp()) // 30), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{value:06d}"


def test_wrong_mfa_codes_count_and_only_a_completed_login_resets(user, clock, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # django-otp's own back-off has its test elsewhere
    enrolment = mfa.mfa_enrolment_start(user=user)
    key = base64.b32decode(enrolment.secret.replace(" ", ""))
    mfa.mfa_enrolment_confirm(user=user, code=_totp(key, dt.datetime.now(dt.UTC)))
    clock.shift(30)
    client = from_ip("198.51.100.1")
    for _ in range(5):
        attempt(client, user.username, "wrong")
    # the right password alone is no success: the count goes on at the MFA step
    assert attempt(client, user.username, PASSWORD)["Location"] == "/login/mfa/"
    for _ in range(4):
        assert client.post("/login/mfa/", {"code": "000000"}).status_code == 400
    response = client.post("/login/mfa/", {"code": "000000"})  # the tenth failure
    assert response.status_code == 429
    assert BLOCKED_ACCOUNT in response.content.decode()
    right = _totp(key, dt.datetime.now(dt.UTC))
    assert client.post("/login/mfa/", {"code": right}).status_code == 429
    assert "_auth_user_id" not in client.session

    clock.shift(15 * 60)
    client = from_ip("198.51.100.2")
    assert attempt(client, user.username, PASSWORD)["Location"] == "/login/mfa/"
    response = client.post("/login/mfa/", {"code": _totp(key, dt.datetime.now(dt.UTC))})
    assert response["Location"] == "/"
    for _ in range(9):  # the completed login reset the account's count
        assert attempt(from_ip("198.51.100.3"), user.username, "wrong").status_code == 200
