"""OpenID Connect sign-in against a real provider on 127.0.0.1 (tests/identity/op.py): the
authorization code flow with state, nonce and PKCE, just-in-time accounts and memberships, the
group mapping at every login, and each refusal with its error page."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client

from identity import services
from identity.models import ExternalIdentity, IdentityProvider, SsoGrant
from orgs.models import AuditEvent, Membership, Role
from tests.identity.op import TestOP, authorize
from tests.orgs.factories import SYSTEM, Tree, UserFactory, add_member, make_tree

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
User = get_user_model()


@pytest.fixture(autouse=True)
def _frozen_clock() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture(autouse=True)
def _no_cached_discovery() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


class Org:
    def __init__(self, tree: Tree, op: TestOP, provider: IdentityProvider) -> None:
        self.tree, self.op, self.provider = tree, op, provider
        self.slug = tree.org.slug


def _org(slug: str, op: TestOP, domain: str) -> Org:
    tree = make_tree(slug)
    op.add_client(f"mr-{slug}", f"secret-{slug}", f"http://testserver/sso/{slug}/callback/")
    provider = services.identity_provider_create(
        actor=SYSTEM,
        organization=tree.org,
        name=f"{slug.title()} IdP",
        discovery_url=op.discovery_url,
        client_id=f"mr-{slug}",
        client_secret=f"secret-{slug}",
        domains=[domain],
    )
    services.group_mapping_create(
        actor=SYSTEM, provider=provider, group="eng-platform", node=tree.team, role=Role.DEVELOPER
    )
    services.group_mapping_create(
        actor=SYSTEM, provider=provider, group="eng-admins", node=tree.dept, role=Role.ADMIN
    )
    return Org(tree, op, provider)


@pytest.fixture
def acme() -> Iterator[Org]:
    with TestOP("acme") as op:
        op.add_user("alice", email="alice@acme.example", name="Alice", groups=["eng-platform"])
        yield _org("acme", op, "acme.example")


@pytest.fixture
def globex() -> Iterator[Org]:
    with TestOP("globex") as op:
        op.add_user("gina", email="gina@globex.example", groups=["eng-platform"])
        yield _org("globex", op, "globex.example")


def start(client: Client, org: Org, query: str = "") -> str:
    response = client.get(f"/sso/{org.slug}/{query}")
    assert response.status_code == 302, response.content
    return response["Location"]


def callback(client: Client, url: str) -> Any:
    parts = urlsplit(url)
    return client.get(parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()})


def sign_in(client: Client, org: Org, username: str) -> Any:
    return callback(client, authorize(org.op, start(client, org), username))


def refused(response: Any, status: int, title: str) -> None:
    assert response.status_code == status, response.content.decode()[:500]
    assert response.templates[0].name == "sso/error.html"
    assert f"<h1>{title}</h1>" in response.content.decode()
    assert "_auth_user_id" not in response.wsgi_request.session


def active(user: Any, org: Org) -> set[tuple[int, str]]:
    return set(
        Membership.objects.filter(
            user=user, organization=org.tree.org, removed_at__isnull=True
        ).values_list("node_id", "role")
    )


# -- the flow --------------------------------------------------------------------------------


def test_first_login_creates_the_account_and_the_mapped_membership(acme):
    client = Client()
    url = start(client, acme)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{acme.op.issuer}/authorize?")
    assert query["client_id"] == ["mr-acme"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == ["http://testserver/sso/acme/callback/"]
    assert query["scope"] == ["openid email profile"]
    assert len(query["state"][0]) >= 40 and len(query["nonce"][0]) >= 40

    response = callback(client, authorize(acme.op, url, "alice"))

    assert response.status_code == 302 and response["Location"] == "/o/acme/"
    alice = User.objects.get(email="alice@acme.example")
    assert response.wsgi_request.session["_auth_user_id"] == str(alice.pk)
    assert alice.username == "alice@acme.example" and alice.first_name == "Alice"
    assert not alice.has_usable_password()
    assert active(alice, acme) == {(acme.tree.team.pk, Role.DEVELOPER)}
    identity = ExternalIdentity.objects.get(user=alice)
    assert (identity.identity_provider, identity.subject) == (acme.provider, "acme-alice")
    # PKCE: the verifier sent to the token endpoint hashes to the challenge sent to authorize
    verifier = acme.op.token_requests[0]["code_verifier"]
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert digest.decode() == query["code_challenge"][0]
    assert list(
        AuditEvent.objects.filter(organization=acme.tree.org)
        .order_by("id")
        .values_list("action", flat=True)
    )[-3:] == ["sso.account_create", "membership.create", "sso.login"]
    # the console opens
    assert client.get("/o/acme/").status_code == 200


def test_the_mapping_follows_the_groups_at_every_login_and_leaves_other_roles(acme):
    alice_idp = acme.op.users["alice"]
    assert sign_in(Client(), acme, "alice").status_code == 302
    alice = User.objects.get(email="alice@acme.example")
    by_hand = add_member(acme.tree.project, Role.VIEWER, alice)  # granted in the console

    alice_idp.groups = ["eng-admins"]
    assert sign_in(Client(), acme, "alice").status_code == 302
    assert active(alice, acme) == {
        (acme.tree.dept.pk, Role.ADMIN),
        (acme.tree.project.pk, Role.VIEWER),
    }
    login = AuditEvent.objects.filter(action="sso.login").order_by("-id").first()
    assert login.changes["groups"] == ["eng-admins"]
    assert len(login.changes["added"]) == 1 and len(login.changes["removed"]) == 1

    # a second mapped group on the same node with a stronger role changes the role in place
    services.group_mapping_create(
        actor=SYSTEM, provider=acme.provider, group="ops", node=acme.tree.dept, role=Role.VIEWER
    )
    alice_idp.groups = ["ops"]
    assert sign_in(Client(), acme, "alice").status_code == 302
    assert active(alice, acme) == {
        (acme.tree.dept.pk, Role.VIEWER),
        (acme.tree.project.pk, Role.VIEWER),
    }
    # out of every mapped group: the managed membership goes, the one granted by hand stays
    alice_idp.groups = []
    assert sign_in(Client(), acme, "alice").status_code == 302
    assert active(alice, acme) == {(acme.tree.project.pk, Role.VIEWER)}
    assert SsoGrant.objects.filter(membership__user=alice).count() == 0
    Membership.objects.filter(pk=by_hand.pk).update(removed_at=NOW)
    refused(sign_in(Client(), acme, "alice"), 403, "None of your groups gives access")


def test_a_returning_user_is_found_by_subject_even_after_an_email_change(acme):
    sign_in(Client(), acme, "alice")
    acme.op.users["alice"].email = "alice.smith@acme.example"
    assert sign_in(Client(), acme, "alice").status_code == 302
    assert User.objects.filter(email__startswith="alice").count() == 1


def test_an_existing_member_is_linked_only_with_a_verified_email_of_the_domain(acme):
    bob = UserFactory(username="bob@acme.example", email="bob@acme.example")
    bob.set_password("correct horse battery")
    bob.save()
    add_member(acme.tree.project, Role.VIEWER, bob)
    acme.op.add_user("bob", email="bob@acme.example", groups=["eng-platform"])
    assert sign_in(Client(), acme, "bob").status_code == 302
    assert ExternalIdentity.objects.get(identity_provider=acme.provider).user == bob
    assert AuditEvent.objects.filter(action="sso.account_link", target_id=str(bob.pk)).exists()
    bob.refresh_from_db()
    assert bob.check_password("correct horse battery")


# -- refusals --------------------------------------------------------------------------------


def _nothing_created(acme: Org) -> None:
    assert not User.objects.filter(email="alice@acme.example").exists()
    assert not ExternalIdentity.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="sso.").exists()


def test_a_token_signed_with_a_key_the_provider_does_not_publish_is_refused(acme):
    acme.op.misbehave.signing_key = "attacker"
    refused(
        sign_in(Client(), acme, "alice"),
        403,
        "The identity provider&#x27;s answer is not signed correctly",
    )
    _nothing_created(acme)


def test_a_token_for_another_audience_is_refused(acme):
    acme.op.misbehave.audience = "some-other-app"
    refused(sign_in(Client(), acme, "alice"), 403, "The answer was meant for another application")
    _nothing_created(acme)


def test_an_expired_token_is_refused(acme):
    acme.op.misbehave.lifetime = -120  # beyond the 30 s leeway
    refused(sign_in(Client(), acme, "alice"), 403, "The answer has expired")
    _nothing_created(acme)


def test_a_token_with_another_nonce_is_refused(acme):
    acme.op.misbehave.nonce = "nonce-of-another-sign-in"
    refused(sign_in(Client(), acme, "alice"), 403, "The answer does not belong to this sign-in")
    _nothing_created(acme)


def test_a_token_from_another_issuer_is_refused(acme):
    acme.op.misbehave.issuer = "https://evil.example"
    refused(sign_in(Client(), acme, "alice"), 403, "The answer came from another issuer")
    _nothing_created(acme)


def test_a_state_works_once_and_only_in_the_browser_that_started_it(acme):
    client = Client()
    back = authorize(acme.op, start(client, acme), "alice")
    refused(callback(Client(), back), 400, "This sign-in has expired or was already used")
    assert callback(client, back).status_code == 302
    client.logout()
    refused(callback(client, back), 400, "This sign-in has expired or was already used")
    assert len(acme.op.token_requests) == 1  # neither replay reached the provider


def test_a_sign_in_older_than_ten_minutes_is_refused(acme):
    client = Client()
    back = authorize(acme.op, start(client, acme), "alice")
    with time_machine.travel(NOW + dt.timedelta(minutes=11), tick=False):
        refused(callback(client, back), 400, "This sign-in has expired or was already used")


def test_an_unverified_email_creates_and_links_nothing(acme):
    acme.op.users["alice"].email_verified = False
    refused(sign_in(Client(), acme, "alice"), 403, "Your email address is not verified")
    _nothing_created(acme)
    # nor does it take over an existing account of that address
    existing = UserFactory(username="alice@acme.example", email="alice@acme.example")
    add_member(acme.tree.project, Role.VIEWER, existing)
    refused(sign_in(Client(), acme, "alice"), 403, "Your email address is not verified")
    assert not ExternalIdentity.objects.exists()


def test_without_email_verified_only_entra_ids_domain_verified_claim_vouches(acme):
    alice = acme.op.users["alice"]
    alice.email_verified = None
    refused(sign_in(Client(), acme, "alice"), 403, "Your email address is not verified")
    alice.extra = {"xms_edov": "true"}  # a string is not the Boolean Entra ID sends
    refused(sign_in(Client(), acme, "alice"), 403, "Your email address is not verified")
    alice.extra = {"xms_edov": True}
    assert sign_in(Client(), acme, "alice").status_code == 302
    assert User.objects.filter(email="alice@acme.example").exists()
    # an explicit email_verified false wins over xms_edov
    acme.op.add_user(
        "al2", email="al2@acme.example", email_verified=False, extra={"xms_edov": True}
    )
    refused(sign_in(Client(), acme, "al2"), 403, "Your email address is not verified")


def test_a_disabled_user_is_refused(acme):
    sign_in(Client(), acme, "alice")
    User.objects.filter(email="alice@acme.example").update(is_active=False)
    refused(sign_in(Client(), acme, "alice"), 403, "Your account is disabled")


def test_a_provider_disabled_by_the_owner_refuses_new_and_started_sign_ins(acme):
    client = Client()
    back = authorize(acme.op, start(client, acme), "alice")
    services.identity_provider_update(actor=SYSTEM, provider=acme.provider, enabled=False)
    refused(callback(client, back), 403, "Single sign-on is switched off")
    refused(
        Client().get(f"/sso/acme/?provider={acme.provider.pk}"),
        403,
        "Single sign-on is switched off",
    )
    refused(Client().get("/sso/acme/"), 404, "Single sign-on is not set up")
    _nothing_created(acme)


def test_no_mapped_group_creates_no_account(acme):
    acme.op.users["alice"].groups = ["marketing"]
    refused(sign_in(Client(), acme, "alice"), 403, "None of your groups gives access")
    _nothing_created(acme)


def test_a_client_secret_the_provider_does_not_accept_is_shown(acme):
    services.identity_provider_update(
        actor=SYSTEM, provider=acme.provider, client_secret="typed-wrong"
    )
    response = sign_in(Client(), acme, "alice")
    refused(response, 502, "The sign-in could not be completed")
    assert "The token endpoint answered invalid_client." in response.content.decode()
    _nothing_created(acme)


def test_a_token_endpoint_that_does_not_answer_is_shown(acme):
    client = Client()
    back = authorize(acme.op, start(client, acme), "alice")
    acme.op.stop()  # the discovery document stays cached; the token endpoint is gone
    refused(callback(client, back), 502, "The identity provider did not answer")
    _nothing_created(acme)


def test_an_error_from_the_provider_is_shown(acme):
    client = Client()
    url = start(client, acme)
    state = parse_qs(urlsplit(url).query)["state"][0]
    response = client.get("/sso/acme/callback/", {"state": state, "error": "access_denied"})
    refused(response, 403, "The identity provider refused the sign-in")
    assert "access_denied" in response.content.decode()


# -- tenants ---------------------------------------------------------------------------------


def test_the_provider_of_one_organization_never_signs_anyone_into_another(acme, globex):
    # a sign-in started at acme, brought to globex's callback: unknown there
    client = Client()
    back = authorize(acme.op, start(client, acme), "alice")
    refused(
        client.get("/sso/globex/callback/", dict(parse_qs(urlsplit(back).query))),
        400,
        "This sign-in has expired or was already used",
    )
    # acme's provider vouching for an address of globex's domain: not acme's domain
    acme.op.add_user("mallory", email="gina@globex.example", groups=["eng-platform"])
    refused(
        sign_in(Client(), acme, "mallory"),
        403,
        "This email domain is not set up for this organization",
    )
    # globex's member signs in through globex; acme's provider cannot take that account over,
    # even for an address of acme's domain
    carol = UserFactory(username="carol@acme.example", email="carol@acme.example")
    add_member(globex.tree.project, Role.DEVELOPER, carol)
    acme.op.add_user("carol", email="carol@acme.example", groups=["eng-platform"])
    refused(sign_in(Client(), acme, "carol"), 403, "An account with this email already exists")
    assert active(carol, acme) == set()
    assert not ExternalIdentity.objects.filter(user=carol).exists()
    assert sign_in(Client(), globex, "gina").status_code == 302
    gina = User.objects.get(email="gina@globex.example")
    assert active(gina, acme) == set()
    assert active(gina, globex) == {(globex.tree.team.pk, Role.DEVELOPER)}
    assert not AuditEvent.objects.filter(organization=acme.tree.org, action="sso.login").exists()


def test_an_organizations_login_url_never_starts_another_organizations_provider(acme, globex):
    client = Client()
    refused(
        client.get(f"/sso/globex/?provider={acme.provider.pk}"),
        404,
        "Single sign-on is not set up",
    )
    assert not client.session.get("sso_pending")  # no sign-in was started
    assert start(client, globex, f"?provider={globex.provider.pk}").startswith(globex.op.issuer)
    # a provider id that is not a number reads the same
    refused(Client().get("/sso/globex/?provider=x"), 404, "Single sign-on is not set up")


def test_a_mapping_cannot_point_at_another_organizations_node(acme, globex):
    from orgs.errors import InvalidInput

    with pytest.raises(InvalidInput) as exc:
        services.group_mapping_create(
            actor=SYSTEM, provider=acme.provider, group="x", node=globex.tree.team, role="viewer"
        )
    assert exc.value.errors == {"node": ["Choose a node of this organization."]}


# -- the login page --------------------------------------------------------------------------


def test_the_login_page_sends_an_email_of_a_declared_domain_to_its_provider(acme):
    client = Client()
    response = client.post("/sso/", {"email": "Alice@Acme.Example"})
    assert response.status_code == 302
    assert response["Location"] == (
        f"/sso/acme/?provider={acme.provider.pk}&login_hint=Alice%40Acme.Example&next="
    )
    url = start(client, acme, response["Location"].removeprefix("/sso/acme/"))
    assert parse_qs(urlsplit(url).query)["login_hint"] == ["Alice@Acme.Example"]
    unknown = client.post("/sso/", {"email": "someone@elsewhere.example"})
    assert unknown.status_code == 400
    assert "No single sign-on is set up for elsewhere.example." in unknown.content.decode()


def test_password_login_is_refused_where_the_organization_requires_sso(acme):
    dev = UserFactory(username="dev@acme.example", email="dev@acme.example")
    dev.set_password("correct horse battery")
    dev.save()
    add_member(acme.tree.project, Role.DEVELOPER, dev)
    outsider = UserFactory(username="new@acme.example", email="new@acme.example")
    outsider.set_password("correct horse battery")
    outsider.save()
    services.sso_policy_update(
        actor=SYSTEM, organization=acme.tree.org, password_login_allowed=False
    )
    for username in ("dev@acme.example", "new@acme.example"):  # a member; an address of the domain
        client = Client()
        response = client.post(
            "/login/", {"username": username, "password": "correct horse battery"}
        )
        assert response.status_code == 200
        assert "Acme requires single sign-on" in response.content.decode()
        assert "_auth_user_id" not in client.session
    services.sso_policy_update(
        actor=SYSTEM, organization=acme.tree.org, password_login_allowed=True
    )
    client = Client()
    response = client.post(
        "/login/", {"username": "dev@acme.example", "password": "correct horse battery"}
    )
    assert response.status_code == 302


def test_an_organizations_mfa_requirement_is_met_by_its_own_provider_only(acme, globex):
    """MFA is required of password logins: a session signed in by an organization's own
    provider opens its pages, while another organization that requires MFA still asks for
    it (its provider did not sign this session in). The session is on the sessions page."""
    from orgs.models import LoginSession

    client = Client()
    assert sign_in(client, acme, "alice").status_code == 302
    alice = User.objects.get(email="alice@acme.example")
    for org in (acme.tree.org, globex.tree.org):
        org.require_mfa = True
        org.save(update_fields=["require_mfa"])
    add_member(globex.tree.team, Role.DEVELOPER, alice)  # added in globex's console by hand

    assert client.get("/o/acme/").status_code == 200
    assert client.get("/api/orgs/acme/nodes/").status_code == 200
    elsewhere = client.get("/o/globex/")
    assert elsewhere.status_code == 302 and "mfa" in elsewhere["Location"]
    api = client.get("/api/orgs/globex/nodes/")
    assert api.status_code == 403 and api.json()["code"] == "mfa_required"
    assert LoginSession.objects.filter(user=alice, ended_at__isnull=True).count() == 1


def test_failed_sign_ins_count_against_the_address_like_wrong_passwords(acme, settings):
    settings.MEGAROUTER_LOGIN_FAILURES_PER_IP = 3
    client = Client()
    for _ in range(3):  # a callback with a state nobody issued: refused, counted
        response = client.get("/sso/acme/callback/", {"state": "forged", "code": "x"})
        assert response.status_code == 400, response.status_code
    response = sign_in(client, acme, "alice")  # even a good sign-in waits now
    assert response.status_code == 429 and "Too many failed" in response.content.decode()
    assert int(response["Retry-After"]) > 0
    assert not User.objects.filter(email="alice@acme.example").exists()
    # the login page's email lookup is limited the same way
    r = client.post("/sso/", {"email": "someone@unknown.example"})
    assert r.status_code == 429
