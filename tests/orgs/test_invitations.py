"""Invitation services: the email's one link, accepting as an existing user, and accepting as
a new person (``invitation_accept_new_user``), with every refusal changing nothing."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import resolve
from django.utils import timezone

from orgs import services
from orgs.audit import Actor
from orgs.errors import InvalidInput
from orgs.models import AuditEvent, Invitation, Membership
from orgs.selectors import invitation_for_token, invitation_url
from tests.orgs.factories import SYSTEM, UserFactory, add_member, make_tree
from tests.orgs.test_api_isolation import snapshot

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def t():
    return make_tree("alpha")


def invite(node, email="new.person@example.com", **kwargs):
    return services.invitation_create(
        actor=kwargs.pop("actor", SYSTEM), node=node, email=email, role="developer", **kwargs
    )


def test_the_email_holds_one_absolute_link_from_the_public_url(
    t, settings, django_capture_on_commit_callbacks
):
    settings.MEGAROUTER_PUBLIC_URL = "https://console.example.com"
    with django_capture_on_commit_callbacks(execute=True):
        created = invite(t.team, actor=Actor(user=t.owner))
    (message,) = mail.outbox
    assert message.to == ["new.person@example.com"]
    assert message.subject == "Invitation to Alpha on MegaRouter"
    links = re.findall(r"https?://\S+", message.body)
    assert links == [f"https://console.example.com/invitations/{created.token}/"]
    assert invitation_url(created.token) == links[0]
    assert resolve(f"/invitations/{created.token}/").view_name == "console:invitation"
    assert "POST /api/" not in message.body
    assert "invited by alpha-owner to join Alpha on MegaRouter as developer of Platform" in (
        message.body
    )


def test_a_new_person_gets_an_account_and_the_membership(t):
    created = invite(t.team)
    actor = Actor(ip="203.0.113.9", request_id="req-1")
    membership = services.invitation_accept_new_user(
        actor=actor, token=created.token, name=" New Person ", password=PASSWORD
    )
    user = membership.user
    assert (user.username, user.email, user.first_name) == (
        "new.person@example.com",
        "new.person@example.com",
        "New Person",
    )
    assert user.check_password(PASSWORD)
    assert (user.is_active, user.is_staff, user.is_superuser) == (True, False, False)
    assert (membership.node_id, membership.role, membership.organization_id) == (
        t.team.pk,
        "developer",
        t.org.pk,
    )
    inv = Invitation.objects.get(pk=created.invitation.pk)
    assert (inv.accepted_by_id, inv.membership_id) == (user.pk, membership.pk)
    events = list(
        AuditEvent.objects.filter(organization=t.org, actor=user)
        .order_by("id")
        .values_list("action", "target_type", "target_id", "actor_label", "ip")
    )
    assert events == [
        ("user.create", "user", str(user.pk), user.username, "203.0.113.9"),
        ("membership.create", "membership", str(membership.pk), user.username, "203.0.113.9"),
        ("invitation.accept", "invitation", str(inv.pk), user.username, "203.0.113.9"),
    ]
    created_event = AuditEvent.objects.get(action="user.create")
    assert created_event.changes == {
        "email": "new.person@example.com",
        "name": "New Person",
        "invitation": inv.pk,
    }
    with pytest.raises(InvalidInput) as exc:  # single use
        services.invitation_accept_new_user(
            actor=actor, token=created.token, name="Again", password=PASSWORD
        )
    assert exc.value.errors == {"token": ["This invitation has already been used."]}


@pytest.mark.parametrize(
    ("name", "password", "errors"),
    [
        ("N", "", {"password": ["This field may not be blank."]}),
        (
            "N",
            "short",
            {"password": ["This password is too short. It must contain at least 8 characters."]},
        ),
        ("N", "90817263545", {"password": ["This password is entirely numeric."]}),
        ("N", "password123", {"password": ["This password is too common."]}),
        (
            "N",
            "new.person.example",
            {"password": ["The password is too similar to the username."]},
        ),
        ("x" * 151, PASSWORD, {"name": ["Ensure this field has no more than 150 characters."]}),
    ],
)
def test_bad_name_or_password_changes_nothing(t, name, password, errors):
    created = invite(t.team)
    before = snapshot()
    users = get_user_model().objects.count()
    with pytest.raises(InvalidInput) as exc:
        services.invitation_accept_new_user(
            actor=SYSTEM, token=created.token, name=name, password=password
        )
    assert exc.value.errors == errors
    assert snapshot() == before
    assert get_user_model().objects.count() == users
    assert invitation_for_token(token=created.token).state == "pending"


def test_an_existing_account_is_never_taken_over(t):
    existing = UserFactory(username="np", email="New.Person@example.com")
    existing.set_password("the owner's own passphrase")
    existing.save()
    created = invite(t.team)
    before = snapshot()
    with pytest.raises(InvalidInput) as exc:
        services.invitation_accept_new_user(
            actor=SYSTEM, token=created.token, name="Mallory", password=PASSWORD
        )
    assert exc.value.errors == {
        "token": [
            "An account with this email address already exists: log in, then open the "
            "invitation link again."
        ]
    }
    assert snapshot() == before
    existing.refresh_from_db()
    assert existing.check_password("the owner's own passphrase")
    assert existing.first_name == ""
    # ... its owner accepts once logged in
    membership = services.invitation_accept(actor=Actor(user=existing), token=created.token)
    assert (membership.user_id, membership.node_id) == (existing.pk, t.team.pk)


def test_a_username_equal_to_the_email_also_counts_as_an_existing_account(t):
    UserFactory(username="new.person@example.com", email="")
    created = invite(t.team)
    with pytest.raises(InvalidInput):
        services.invitation_accept_new_user(
            actor=SYSTEM, token=created.token, name="N", password=PASSWORD
        )
    assert get_user_model().objects.filter(email="new.person@example.com").count() == 0


def test_expired_revoked_forged_and_wrong_email_are_refused_with_nothing_changed(t):
    expired, revoked, fine = (invite(t.team, email=f"p{i}@example.com") for i in range(3))
    services.invitation_revoke(actor=SYSTEM, invitation=revoked.invitation)
    forged = fine.token[:-4] + ("aaaa" if not fine.token.endswith("aaaa") else "bbbb")
    later = timezone.now() + services.INVITATION_TTL + dt.timedelta(seconds=1)
    cases = [
        (expired.token, "This invitation has expired."),
        (revoked.token, "This invitation has been revoked."),
        (forged, "This invitation token is not valid."),
        ("mri_nonexistent0_" + "x" * 43, "This invitation token is not valid."),
        ("not a token", "This invitation token is not valid."),
    ]
    before = snapshot()
    with time_machine.travel(later, tick=False):
        for token, message in cases:
            with pytest.raises(InvalidInput) as exc:
                services.invitation_accept_new_user(
                    actor=SYSTEM, token=token, name="N", password=PASSWORD
                )
            assert exc.value.errors == {"token": [message]}, token
    stranger = UserFactory(email="someone@example.com")
    with pytest.raises(InvalidInput) as exc:
        services.invitation_accept(actor=Actor(user=stranger), token=fine.token)
    assert exc.value.errors == {"token": ["This invitation was sent to another email address."]}
    assert snapshot() == before
    assert invitation_for_token(token=fine.token).state == "pending"


def test_an_archived_node_refuses_the_invitation(t):
    created = invite(t.project)
    services.node_archive(actor=SYSTEM, node=t.project)
    with pytest.raises(InvalidInput) as exc:
        services.invitation_accept_new_user(
            actor=SYSTEM, token=created.token, name="N", password=PASSWORD
        )
    assert exc.value.errors == {"token": ["The invitation's node has been archived."]}


def test_a_token_of_one_organization_never_joins_another(t):
    beta = make_tree("beta")
    member_of_beta = add_member(beta.team, "viewer", UserFactory(email="both@example.com")).user
    created = invite(t.team, email="both@example.com")
    membership = services.invitation_accept(actor=Actor(user=member_of_beta), token=created.token)
    assert (membership.organization_id, membership.node_id) == (t.org.pk, t.team.pk)
    assert set(
        Membership.objects.filter(user=member_of_beta).values_list("organization__slug", "role")
    ) == {("alpha", "developer"), ("beta", "viewer")}
    assert not AuditEvent.objects.filter(organization=beta.org, action="invitation.accept")


def test_user_create_validates_every_field():
    with pytest.raises(InvalidInput) as exc:
        services.user_create(email="not-an-email", password="123", name="x" * 151)
    assert set(exc.value.errors) == {"email", "password", "name"}
    user = services.user_create(email="Ops@Example.com", password=PASSWORD, operator=True)
    assert (user.username, user.email, user.is_staff, user.is_superuser) == (
        "ops@example.com",
        "ops@example.com",
        True,
        True,
    )
    with pytest.raises(InvalidInput) as exc:
        services.user_create(email="ops@example.COM", password=PASSWORD)
    assert exc.value.errors == {"email": ["An account with this email address already exists."]}
