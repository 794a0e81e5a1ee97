"""The sessions page (``/account/sessions/``, orgs/login_sessions.py): logins are listed with
their address and browser, "sign out other sessions" ends them in the session store at once,
logging out ends a row, and nobody sees or ends another user's sessions."""

from __future__ import annotations

import pytest
from django.test import Client

from orgs.models import LoginSession
from tests.console.factories import make_tenant

pytestmark = pytest.mark.django_db

PASSWORD = "a long pass phrase 42"


@pytest.fixture(autouse=True)
def _fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def acme():
    tenant = make_tenant("acme")
    for user in (tenant.developer, tenant.viewer):
        user.set_password(PASSWORD)
        user.save()
    return tenant


def logged_in(user, ip: str, agent: str) -> Client:
    client = Client(REMOTE_ADDR=ip, HTTP_USER_AGENT=agent)
    response = client.post("/login/", {"username": user.username, "password": PASSWORD})
    assert response["Location"] == "/"
    return client


def test_sign_out_other_sessions_ends_them_and_keeps_this_one(acme):
    laptop = logged_in(acme.developer, "198.51.100.1", "Firefox on the laptop")
    phone = logged_in(acme.developer, "198.51.100.2", "Safari on the phone")
    neighbour = logged_in(acme.viewer, "203.0.113.5", "the viewer's browser")

    page = laptop.get("/account/sessions/").content.decode()
    assert page.count("<tr>") == 3  # the header and two sessions
    assert "198.51.100.1" in page and "198.51.100.2" in page
    assert "Safari on the phone" in page and "this session" in page
    assert "203.0.113.5" not in page  # another user's session

    response = laptop.post("/account/sessions/end-others/", follow=True)
    assert "Signed out 1 other session." in response.content.decode()
    assert phone.get("/o/acme/")["Location"] == "/login/?next=/o/acme/"
    assert laptop.get("/o/acme/").status_code == 200
    assert neighbour.get("/o/acme/").status_code == 200
    rows = LoginSession.objects.filter(user=acme.developer)
    assert sorted((r.ip, r.ended_at is None) for r in rows) == [
        ("198.51.100.1", True),
        ("198.51.100.2", False),
    ]
    page = laptop.get("/account/sessions/").content.decode()
    assert "198.51.100.2" not in page


def test_logging_out_ends_the_row_and_an_expired_session_is_not_listed(acme, settings):
    first = logged_in(acme.developer, "198.51.100.1", "one")
    second = logged_in(acme.developer, "198.51.100.2", "two")
    first.post("/logout/")
    row = LoginSession.objects.get(ip="198.51.100.1")
    assert row.ended_at is not None
    page = second.get("/account/sessions/").content.decode()
    assert "198.51.100.1" not in page and "198.51.100.2" in page
    # a session the store no longer holds (expired, flushed) is not shown either
    LoginSession.objects.filter(pk=row.pk).update(ended_at=None)
    assert "198.51.100.1" not in second.get("/account/sessions/").content.decode()
    response = second.post("/account/sessions/end-others/", follow=True)
    assert "Signed out 0 other sessions." in response.content.decode()


def test_the_pages_need_a_login_and_get_only_lists(acme):
    anonymous = Client()
    assert anonymous.get("/account/sessions/")["Location"] == "/login/?next=/account/sessions/"
    response = anonymous.post("/account/sessions/end-others/")
    assert response["Location"].startswith("/login/")
    member = logged_in(acme.developer, "198.51.100.1", "one")
    assert member.get("/account/sessions/end-others/").status_code == 405
    assert LoginSession.objects.get(user=acme.developer).ended_at is None
