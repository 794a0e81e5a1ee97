"""Console MFA (docs/identity.md): enrolment from the page's own secret, login with and
without MFA, wrong and replayed codes, single-use recovery codes, turning it off, an
organization's requirement (pages, the management API, tokens), and who may change it.

Codes are computed here from the secret (RFC 6238, independent of django-otp) on a frozen clock.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import struct
from typing import Any

import pytest
import time_machine
from django.test import Client
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from console.audit_text import audit_lines
from orgs import mfa, services
from orgs.audit import Actor
from orgs.models import AuditEvent, LoginSession, Organization, Role
from tests.console.factories import SYSTEM, UserFactory, add_member, make_tenant, make_tree

pytestmark = pytest.mark.django_db

PASSWORD = "a long pass phrase 42"
START = dt.datetime(2026, 3, 2, 9, 0, 0, tzinfo=dt.UTC)


def totp(key: bytes, at: dt.datetime, step: int = 30) -> str:
    counter = int(at.timestamp()) // step
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{value:06d}"


def key_of(secret_text: str) -> bytes:
    return base64.b32decode(secret_text.replace(" ", ""))


@pytest.fixture(autouse=True)
def _fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def acme():
    return make_tenant("acme")


def with_password(user: Any) -> Any:
    user.set_password(PASSWORD)
    user.save()
    return user


def enrol(user: Any) -> tuple[bytes, list[str]]:
    """MFA on through the services (the page's own path is tested below): the key and codes."""
    enrolment = mfa.mfa_enrolment_start(user=user)
    key = key_of(enrolment.secret)
    _device, codes = mfa.mfa_enrolment_confirm(user=user, code=totp(key, now()))
    return key, codes


def verified_client(user: Any, key: bytes, clock: Any) -> Client:
    """A logged-in session that passed MFA (through the login pages)."""
    client = Client()
    client.post("/login/", {"username": user.username, "password": PASSWORD})
    clock.shift(30)  # a fresh time step: the code enrol() used is spent
    response = client.post("/login/mfa/", {"code": totp(key, now())})
    assert response.status_code == 302, response.content.decode()
    return client


# -- enrolment ------------------------------------------------------------------------------


def test_enrolment_shows_a_qr_code_and_the_secret_and_turns_on_only_with_a_right_code(acme, clock):
    user = acme.developer
    client = Client()
    client.force_login(user)
    page = client.get("/account/mfa/").content.decode()
    assert "Set up multi-factor authentication" in page
    assert not TOTPDevice.objects.filter(user=user).exists()

    assert client.post("/account/mfa/start/")["Location"] == "/account/mfa/"
    page = client.get("/account/mfa/").content.decode()
    assert "<svg" in page and "MFA setup QR code" in page
    secret = re.search(r'data-testid="mfa-secret">([A-Z2-7 ]+)<', page).group(1)
    key = key_of(secret)
    device = TOTPDevice.objects.get(user=user)
    assert (device.confirmed, key) == (False, device.bin_key)
    # a reload keeps the same secret (the app already scanned it)
    client.post("/account/mfa/start/")
    assert TOTPDevice.objects.get(user=user).key == device.key

    wrong = f"{(int(totp(key, now())) + 1) % 1_000_000:06d}"
    response = client.post("/account/mfa/confirm/", {"code": wrong})
    assert response.status_code == 400
    assert mfa.WRONG_CODE in response.content.decode()
    assert not mfa.mfa_enabled(user)
    response = client.post("/account/mfa/confirm/", {"code": "12ab"})
    assert "Enter the 6 digits the app shows." in response.content.decode()

    clock.shift(2)  # django-otp's back-off after the wrong code: 1 s
    response = client.post("/account/mfa/confirm/", {"code": totp(key, now())})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    codes = re.findall(r"<li>([a-z2-7]{5}-[a-z2-7]{5})</li>", response.content.decode())
    assert len(set(codes)) == 10
    assert mfa.mfa_enabled(user) and mfa.recovery_codes_left(user) == 10
    stored = set(StaticToken.objects.filter(device__user=user).values_list("token", flat=True))
    assert stored.isdisjoint({c for c in codes} | {c.replace("-", "") for c in codes})

    page = client.get("/account/mfa/").content.decode()
    assert "10 recovery codes left." in page
    assert not any(code in page for code in codes)  # shown once


def test_enrolment_starts_over_nothing_when_mfa_is_on(acme, clock):
    user = acme.developer
    enrol(user)
    with pytest.raises(mfa.InvalidInput):
        mfa.mfa_enrolment_start(user=user)
    assert TOTPDevice.objects.filter(user=user).count() == 1


# -- login ----------------------------------------------------------------------------------


def test_login_without_mfa_needs_only_the_password(acme, clock):
    user = with_password(acme.developer)
    client = Client()
    response = client.post("/login/", {"username": user.username, "password": PASSWORD})
    assert response["Location"] == "/"
    assert client.get("/o/acme/").status_code == 200


def test_login_with_mfa_asks_for_a_code_after_the_password(acme, clock):
    user = with_password(acme.developer)
    key, _codes = enrol(user)
    clock.shift(30)
    client = Client()
    response = client.post(
        "/login/?next=/o/acme/keys/", {"username": user.username, "password": PASSWORD}
    )
    assert response["Location"] == "/login/mfa/"
    # not logged in yet
    assert client.get("/o/acme/")["Location"] == "/login/?next=/o/acme/"
    page = client.get("/login/mfa/").content.decode()
    assert "Two-step login" in page

    response = client.post("/login/mfa/", {"code": "000000"})
    assert response.status_code == 400
    assert mfa.WRONG_CODE in response.content.decode()
    assert client.get("/o/acme/").status_code == 302

    response = client.post("/login/mfa/", {"code": totp(key, now())})
    assert response.status_code == 429  # django-otp's back-off: 1 s after a wrong code
    assert "Too many wrong codes in a row: wait 1 s" in response.content.decode()
    clock.shift(2)
    response = client.post("/login/mfa/", {"code": totp(key, now())})
    assert response["Location"] == "/o/acme/keys/"
    assert client.get("/o/acme/keys/").status_code == 200
    assert client.session["otp_device_id"] == TOTPDevice.objects.get(user=user).persistent_id
    session = LoginSession.objects.get(user=user)  # the sessions page's row
    assert (session.session_key, session.mfa) == (client.session.session_key, True)


def test_a_code_is_refused_when_replayed_or_older_than_the_last_one_used(acme, clock):
    user = with_password(acme.developer)
    key, _codes = enrol(user)
    clock.shift(30)
    code = totp(key, now())
    first = Client()
    first.post("/login/", {"username": user.username, "password": PASSWORD})
    assert first.post("/login/mfa/", {"code": code})["Location"] == "/"

    second = Client()
    second.post("/login/", {"username": user.username, "password": PASSWORD})
    assert second.post("/login/mfa/", {"code": code}).status_code == 400  # same window
    clock.shift(2)
    previous = totp(key, now() - dt.timedelta(seconds=30))  # within tolerance, but older
    assert second.post("/login/mfa/", {"code": previous}).status_code == 400
    clock.shift(30)
    assert second.post("/login/mfa/", {"code": totp(key, now())})["Location"] == "/"


def test_the_pending_login_expires_after_five_minutes(acme, clock):
    user = with_password(acme.developer)
    key, _codes = enrol(user)
    client = Client()
    client.post("/login/", {"username": user.username, "password": PASSWORD})
    clock.shift(301)
    response = client.post("/login/mfa/", {"code": totp(key, now())})
    assert response["Location"] == "/login/"
    assert client.get("/o/acme/").status_code == 302


def test_a_recovery_code_logs_in_once(acme, clock):
    user = with_password(acme.developer)
    _key, codes = enrol(user)
    client = Client()
    client.post("/login/", {"username": user.username, "password": PASSWORD})
    response = client.post("/login/mfa/", {"code": codes[3].upper()}, follow=True)
    assert response.redirect_chain[0] == ("/", 302)
    assert "You logged in with a recovery code; 9 left." in response.content.decode()
    assert mfa.recovery_codes_left(user) == 9

    again = Client()
    again.post("/login/", {"username": user.username, "password": PASSWORD})
    clock.shift(2)
    assert again.post("/login/mfa/", {"code": codes[3]}).status_code == 400
    clock.shift(2)
    assert again.post("/login/mfa/", {"code": codes[4]})["Location"] == "/"
    assert mfa.recovery_codes_left(user) == 8


def test_new_recovery_codes_replace_the_old_ones(acme, clock):
    user = with_password(acme.developer)
    key, old = enrol(user)
    client = verified_client(user, key, clock)
    response = client.post("/account/mfa/recovery-codes/", {"regenerate-code": "111111"})
    assert response.status_code == 400 and mfa.WRONG_CODE in response.content.decode()
    clock.shift(30)
    response = client.post("/account/mfa/recovery-codes/", {"regenerate-code": totp(key, now())})
    new = re.findall(r"<li>([a-z2-7]{5}-[a-z2-7]{5})</li>", response.content.decode())
    assert len(new) == 10 and set(new).isdisjoint(old)
    assert mfa.mfa_verify(user=user, code=old[0]) is None
    clock.shift(2)
    assert isinstance(mfa.mfa_verify(user=user, code=new[0]), StaticDevice)


def test_turning_mfa_off_needs_the_password_and_a_code(acme, clock):
    user = with_password(acme.developer)
    key, _codes = enrol(user)
    client = verified_client(user, key, clock)
    clock.shift(30)
    response = client.post(
        "/account/mfa/disable/", {"disable-password": "wrong", "disable-code": totp(key, now())}
    )
    assert response.status_code == 400
    assert "The password is not correct." in response.content.decode()
    response = client.post(
        "/account/mfa/disable/", {"disable-password": PASSWORD, "disable-code": "123"}
    )
    assert response.status_code == 400 and mfa.WRONG_CODE in response.content.decode()
    assert mfa.mfa_enabled(user)
    clock.shift(30)
    response = client.post(
        "/account/mfa/disable/", {"disable-password": PASSWORD, "disable-code": totp(key, now())}
    )
    assert response["Location"] == "/account/mfa/"
    assert not TOTPDevice.objects.filter(user=user).exists()
    assert not StaticDevice.objects.filter(user=user).exists()


def test_mfa_stays_on_while_an_organization_requires_it(acme, clock):
    owner = with_password(acme.tree.owner)
    key, _codes = enrol(owner)
    services.organization_mfa_require(
        actor=Actor(user=owner), organization=acme.tree.org, required=True
    )
    clock.shift(30)
    with pytest.raises(mfa.InvalidInput) as caught:
        mfa.mfa_disable(user=owner, password=PASSWORD, code=totp(key, now()))
    assert caught.value.errors == {
        "__all__": ["Acme require multi-factor authentication: it stays on while you are a member."]
    }
    assert mfa.mfa_enabled(owner)


# -- an organization's requirement ----------------------------------------------------------


def test_the_owner_turns_the_requirement_on_after_their_own_mfa_and_it_is_audited(acme, clock):
    owner = with_password(acme.tree.owner)
    org = acme.tree.org
    client = Client()
    client.force_login(owner)
    response = client.post("/o/acme/settings/mfa/", {"require_mfa": "on"})
    assert response.status_code == 400
    assert "Turn on multi-factor authentication for your own account first." in (
        response.content.decode()
    )
    org.refresh_from_db()
    assert org.require_mfa is False

    key, _codes = enrol(owner)
    client = verified_client(owner, key, clock)
    response = client.post("/o/acme/settings/mfa/", {"require_mfa": "on"})
    assert response["Location"] == "/o/acme/settings/"
    org.refresh_from_db()
    assert org.require_mfa is True
    event = AuditEvent.objects.get(organization=org, action="organization.mfa_require")
    assert (event.actor, event.changes) == (owner, {"require_mfa": [False, True]})
    line = audit_lines(org, [event])[0]
    assert line.text == (
        "acme-owner (acme-owner@example.com) required multi-factor authentication of every member of Acme"
    )
    client.post("/o/acme/settings/mfa/", {})
    org.refresh_from_db()
    assert org.require_mfa is False
    off = AuditEvent.objects.filter(action="organization.mfa_require").order_by("-id").first()
    assert audit_lines(org, [off])[0].text.endswith(
        "stopped requiring multi-factor authentication in Acme"
    )


def test_only_an_owner_changes_the_requirement_and_never_another_organizations(acme, clock):
    other = make_tree("beta")
    owner = acme.tree.owner
    enrol(owner)
    root_admin = add_member(acme.tree.root, Role.ADMIN, UserFactory(username="root-admin")).user
    enrol(root_admin)
    for user, slug, status in ((root_admin, "acme", 403), (owner, "beta", 404)):
        client = Client()
        client.force_login(user)
        response = client.post(f"/o/{slug}/settings/mfa/", {"require_mfa": "on"})
        assert response.status_code == status
    assert list(Organization.objects.values_list("slug", "require_mfa")) == [
        ("acme", False),
        ("beta", False),
    ]
    assert not AuditEvent.objects.filter(action="organization.mfa_require").exists()
    assert other.org.require_mfa is False


def require(org: Organization) -> None:
    services.organization_mfa_require(actor=SYSTEM, organization=org, required=True)


def test_members_without_mfa_are_sent_to_set_it_up_before_any_page(acme, clock):
    require(acme.tree.org)
    user = with_password(acme.developer)
    client = Client()
    client.force_login(user)
    for path in ("/o/acme/", "/o/acme/keys/", "/o/acme/settings/"):
        response = client.get(path)
        assert response["Location"] == f"/account/mfa/?next={path.replace('/', '%2F')}"
    response = client.get("/o/acme/keys/", follow=True)
    assert "Acme requires multi-factor authentication: set it up to continue." in (
        response.content.decode()
    )
    # setting it up from there goes back where the member was going
    client.post("/account/mfa/start/", {"next": "/o/acme/keys/"})
    key = TOTPDevice.objects.get(user=user).bin_key
    response = client.post(
        "/account/mfa/confirm/", {"code": totp(key, now()), "next": "/o/acme/keys/"}
    )
    assert 'href="/o/acme/keys/">I have saved them' in response.content.decode()
    assert client.get("/o/acme/keys/").status_code == 200
    # an organization that does not require it is not affected by another's setting
    beta = make_tree("beta")
    add_member(beta.root, Role.VIEWER, UserFactory(username="no-mfa"))
    plain = Client()
    plain.force_login(beta.org.memberships.get(user__username="no-mfa").user)
    assert plain.get("/o/beta/").status_code == 200


def test_a_session_from_before_mfa_enters_a_code_when_the_organization_requires_it(acme, clock):
    require(acme.tree.org)
    user = with_password(acme.developer)
    key, _codes = enrol(user)
    client = Client()
    client.force_login(user)  # a session that never passed MFA
    response = client.get("/o/acme/tree/")
    assert response["Location"] == "/login/mfa/?next=%2Fo%2Facme%2Ftree%2F"
    assert "Confirm it is you" in client.get(response["Location"]).content.decode()
    clock.shift(30)
    response = client.post("/login/mfa/", {"code": totp(key, now()), "next": "/o/acme/tree/"})
    assert response["Location"] == "/o/acme/tree/"
    assert client.get("/o/acme/tree/").status_code == 200


def test_the_management_api_takes_tokens_and_verified_sessions_only(acme, clock):
    require(acme.tree.org)
    user = with_password(acme.tree.owner)
    session = Client()
    session.force_login(user)
    for path in ("/api/orgs/acme/keys/", "/api/orgs/acme/"):
        response = session.get(path)
        assert (response.status_code, response.json()["code"]) == (403, "mfa_required")
    response = session.patch(
        "/api/orgs/acme/", {"name": "Renamed"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert Organization.objects.get(slug="acme").name == "Acme"
    response = session.post("/api/tokens/", {"name": "ci"}, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (403, "mfa_required")

    raw = services.access_token_create(user=user, name="ci").raw_token
    token_client = Client(HTTP_AUTHORIZATION=f"Token {raw}")
    assert token_client.get("/api/orgs/acme/keys/").status_code == 200
    assert token_client.get("/api/orgs/acme/").status_code == 200

    key, _codes = enrol(user)
    verified = verified_client(user, key, clock)
    assert verified.get("/api/orgs/acme/keys/").status_code == 200
    response = verified.post("/api/tokens/", {"name": "ci-2"}, content_type="application/json")
    assert response.status_code == 201


def test_the_django_admin_logs_in_through_the_console_login(acme, clock):
    staff = with_password(UserFactory(username="operator", is_staff=True, is_superuser=True))
    key, _codes = enrol(staff)
    client = Client()
    response = client.get("/admin/", follow=True)
    assert response.redirect_chain == [
        ("/admin/login/?next=/admin/", 302),
        ("/login/?next=%2Fadmin%2F", 302),
    ]
    # the admin's own form is gone: a right password posted there logs nobody in
    response = client.post("/admin/login/", {"username": "operator", "password": PASSWORD})
    assert response["Location"] == "/login/?next=%2Fadmin%2F"
    assert "_auth_user_id" not in client.session
    # through the console: password, then the code
    client.post("/login/?next=/admin/", {"username": "operator", "password": PASSWORD})
    clock.shift(30)
    assert client.post("/login/mfa/", {"code": totp(key, now())})["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/login/")["Location"] == "/admin/"
    member = Client()
    member.force_login(acme.developer)
    assert member.get("/admin/login/").status_code == 403
