"""The invitation email's link, from outside (the Django test client, logged out or in): a new
person creates an account and joins, an existing one logs in first, and every link that cannot
be used says why without showing any organization."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.utils import timezone

from orgs import services
from orgs.audit import Actor
from orgs.models import AuditEvent, Invitation, Membership
from tests.console.factories import SYSTEM, Tenant, UserFactory, make_tenant
from tests.orgs.test_api_isolation import snapshot

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def acme() -> Tenant:
    return make_tenant("acme")


def invite(tenant: Tenant, email: str = "dana@example.com", **kwargs: Any) -> str:
    return services.invitation_create(
        actor=Actor(user=tenant.tree.owner),
        node=tenant.tree.project,
        email=email,
        role="developer",
        **kwargs,
    ).token


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_console_invitation_emails_the_link_and_a_new_person_joins_through_it(
    acme, django_capture_on_commit_callbacks
):
    owner = login(acme.tree.owner)
    with django_capture_on_commit_callbacks(execute=True):
        owner.post(
            "/o/acme/invitations/",
            {"email": "dana@example.com", "node": acme.tree.project.pk, "role": "developer"}
            | {"ttl_hours": 48},
        )
    body = mail.outbox[0].body
    assert "POST /api/" not in body
    (link,) = re.findall(r"https?://\S+", body)
    path = "/" + link.split("/", 3)[3]
    assert re.fullmatch(r"/invitations/mri_[\w-]+/", path)

    visitor = Client()
    page = visitor.get(path)
    html = page.content.decode()
    assert page.status_code == 200
    assert page.templates[0].name == "console/invitation.html"
    for text in ("Join Acme", "Developer of Gateway (project)", "acme-owner", "dana@example.com"):
        assert text in html, text
    assert 'name="password1"' in html
    assert "Your password must contain at least 8 characters." in html  # the validators' rules

    response = visitor.post(
        path, {"name": "Dana Scully", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert (response.status_code, response["Location"]) == (302, "/o/acme/")
    dana = get_user_model().objects.get(email="dana@example.com")
    assert (dana.username, dana.first_name) == ("dana@example.com", "Dana Scully")
    m = Membership.objects.get(user=dana)
    assert (m.organization_id, m.node_id, m.role) == (
        acme.tree.org.pk,
        acme.tree.project.pk,
        "developer",
    )
    overview = visitor.get("/o/acme/")  # logged in by the page
    assert overview.status_code == 200
    assert [str(x) for x in overview.context["messages"]] == [
        "Welcome to Acme: you are developer of Gateway."
    ]
    assert AuditEvent.objects.filter(organization=acme.tree.org, action="user.create").count() == 1

    # the password works on the login page, the email being the username
    again = Client()
    response = again.post("/login/", {"username": "dana@example.com", "password": PASSWORD})
    assert response.status_code == 302

    # the link is single use
    used = Client().get(path)
    assert used.status_code == 410
    assert "This invitation has already been used." in used.content.decode()
    assert "Acme" not in used.content.decode()


def test_bad_passwords_come_back_as_field_errors_and_create_nothing(acme):
    token = invite(acme)
    before = snapshot()
    users = get_user_model().objects.count()
    client = Client()
    response = client.post(
        f"/invitations/{token}/", {"name": "Dana", "password1": "abc", "password2": "abd"}
    )
    assert response.status_code == 400
    assert response.context["form"].errors == {"password2": ["The two passwords differ."]}
    response = client.post(
        f"/invitations/{token}/", {"name": "Dana", "password1": "12345", "password2": "12345"}
    )
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "password1": [
            "This password is too short. It must contain at least 8 characters.",
            "This password is too common.",
            "This password is entirely numeric.",
        ]
    }
    assert snapshot() == before
    assert get_user_model().objects.count() == users
    assert "_auth_user_id" not in client.session


def test_an_existing_account_logs_in_first_and_then_joins_with_one_button(acme):
    dana = UserFactory(username="dana", email="Dana@Example.com")
    dana.set_password("dana's own passphrase")
    dana.save()
    token = invite(acme)
    path = f"/invitations/{token}/"
    visitor = Client()
    page = visitor.get(path)
    html = page.content.decode()
    assert page.status_code == 200
    assert "An account with dana@example.com already exists" in html
    assert f'href="/login/?next=/invitations/{token}/"' in html
    assert 'name="password1"' not in html
    # a sign-up post is not an account takeover: nothing is created or changed
    before = snapshot()
    visitor.post(path, {"name": "Mallory", "password1": PASSWORD, "password2": PASSWORD})
    assert snapshot() == before
    dana.refresh_from_db()
    assert dana.check_password("dana's own passphrase")
    assert "_auth_user_id" not in visitor.session

    response = visitor.post(
        f"/login/?next={path}", {"username": "dana", "password": "dana's own passphrase"}
    )
    assert response["Location"] == path
    page = visitor.get(path)
    assert "Join Acme</button>" in page.content.decode()
    response = visitor.post(path)
    assert response["Location"] == "/o/acme/"
    assert Membership.objects.get(user=dana).node_id == acme.tree.project.pk


def test_logged_in_as_someone_else_the_link_refuses_and_offers_to_log_out(acme):
    token = invite(acme)
    eve = login(UserFactory(username="eve", email="eve@example.com"))
    before = snapshot()
    page = eve.get(f"/invitations/{token}/")
    assert page.status_code == 403
    html = page.content.decode()
    assert "This invitation was sent to another email address" in html
    assert 'action="/logout/"' in html
    assert eve.post(f"/invitations/{token}/").status_code == 403
    assert snapshot() == before


def _refused(client: Client, token: str, status: int, message: str) -> None:
    response = client.get(f"/invitations/{token}/")
    html = response.content.decode()
    assert response.status_code == status
    assert message in html
    for leak in ("Acme", "Gateway", "acme-owner", "dana@example.com"):
        assert leak not in html, leak
    post = client.post(
        f"/invitations/{token}/", {"name": "N", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert post.status_code == status


def test_expired_revoked_unknown_and_forged_links_say_why_and_change_nothing(acme):
    expired, revoked, fine = invite(acme), invite(acme, "r@example.com"), invite(acme, "f@x.io")
    services.invitation_revoke(
        actor=SYSTEM, invitation=Invitation.objects.get(email="r@example.com")
    )
    forged = fine[:-3] + ("xyz" if not fine.endswith("xyz") else "abc")  # right prefix
    before = snapshot()
    later = timezone.now() + services.INVITATION_TTL + dt.timedelta(minutes=1)
    with time_machine.travel(later, tick=False):
        for client in (Client(), login(UserFactory(email="dana@example.com"))):
            _refused(client, expired, 410, "This invitation has expired.")
            _refused(client, revoked, 410, "This invitation has been revoked.")
            _refused(client, forged, 404, "This invitation token is not valid.")
            _refused(client, "mri_nonexistent0_" + "x" * 43, 404, "not valid")
            _refused(client, "garbage", 404, "This invitation token is not valid.")
    assert snapshot() == before
    assert Client().get(f"/invitations/{fine}/").status_code == 200  # the clock, not the data


def test_a_token_of_one_organization_never_joins_another(acme):
    globex = make_tenant("globex")
    token = invite(globex, email="both@example.com")
    both = UserFactory(username="both", email="both@example.com")
    services.membership_create(actor=SYSTEM, node=acme.tree.team, user=both, role="viewer")
    client = login(both)
    page = client.get(f"/invitations/{token}/")
    assert "Join Globex" in page.content.decode()
    assert "Acme" not in page.content.decode()
    assert client.post(f"/invitations/{token}/")["Location"] == "/o/globex/"
    assert set(Membership.objects.filter(user=both).values_list("node_id", "role")) == {
        (acme.tree.team.pk, "viewer"),
        (globex.tree.project.pk, "developer"),
    }
    assert not AuditEvent.objects.filter(organization=acme.tree.org, action="invitation.accept")


def test_the_token_paste_page_opens_the_link_page(acme):
    token = invite(acme)
    dana = login(UserFactory(email="dana@example.com"))
    response = dana.post("/invitations/accept/", {"token": f" {token} "})
    assert response["Location"] == f"/invitations/{token}/"
    response = dana.post(
        "/invitations/accept/", {"token": f"https://console.example.com/invitations/{token}/"}
    )
    assert response["Location"] == f"/invitations/{token}/"
    response = dana.post("/invitations/accept/", {"token": "nope/../x"})
    assert response.status_code == 400
    assert response.context["form"].errors == {"token": ["This invitation token is not valid."]}
    assert not Membership.objects.filter(user__email="dana@example.com")
