"""The audit log's sentences (console/audit_text.py): every action the code records has one, a
tour of the real services renders each as names and links with no raw ids, deleted targets,
another tenant's colliding ids, and a bounded number of queries for a page of events."""

from __future__ import annotations

import ast
import datetime as dt
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import services as billing_services
from billing.models import Budget
from billing.reports.services import report_create
from console.audit_text import SENTENCES, Ref, audit_lines
from identity import services as identity_services
from orgs import services
from orgs.audit import Actor, audit_event_record
from orgs.models import ApiKey, AuditEvent, Organization, Role
from routing.policies import routing_policy_delete
from tests.console.factories import SYSTEM, Tenant, UserFactory, add_member, make_key, make_tenant
from tests.identity.op import TestOP, authorize

pytestmark = pytest.mark.django_db

ROOT = Path(settings.BASE_DIR)
PACKAGES = ("orgs", "identity", "billing", "routing", "gateway", "console", "megarouter", "scripts")
# What the recorded ids look like (Membership, Budget, Report, Node and LedgerEntry ``str()``s,
# "type #id"): none of it may reach a sentence.
RAW = re.compile(
    r"\d+@\d+:\w+"  # membership 3@5:developer
    r"|\b(?:organization|department|team|project|member|key):[\w-]+"  # key:2, team:platform
    r"|\breport \d+\b|#\d+|\b(?:topup|refund|adjustment) -?\d"
)


def recorded_actions() -> dict[str, str]:
    """Every ``action=`` that ``audit_event_record`` is called with in the code base, with
    where: a new action fails the registry test below until it has a sentence."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and _name(node.func) == "audit_event_record"):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                action = next((k.value for k in node.keywords if k.arg == "action"), None)
                if not isinstance(action, ast.Constant) or not isinstance(action.value, str):
                    raise AssertionError(f"{where}: the action must be a string literal")
                found[action.value] = where
    return found


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def test_every_recorded_action_has_a_sentence_and_no_sentence_is_stale():
    actions = recorded_actions()
    assert len(actions) >= 30  # the scan finds the call sites (29 at the time of writing)
    missing = {a: where for a, where in actions.items() if a not in SENTENCES}
    assert missing == {}, "add a sentence to console/audit_text.py for each"
    assert sorted(set(SENTENCES) - set(actions)) == []


# -- a tour of every action through the real services ---------------------------------------


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def acme() -> Tenant:
    return make_tenant("acme")


CALLBACK = "http://testserver/sso/acme/callback/"


def _sso_sign_in(op: TestOP, t: Tenant, provider: Any, username: str) -> None:
    started = identity_services.sso_start(provider=provider, redirect_uri=CALLBACK)
    back = parse_qs(urlsplit(authorize(op, started.url, username)).query)
    identity_services.sso_complete(
        organization=t.tree.org,
        pending=started.pending,
        params={"code": back["code"][0]},
        redirect_uri=CALLBACK,
        actor=Actor(ip="192.0.2.8"),
    )


def identity_tour(t: Tenant, actor: Actor) -> None:
    """Single sign-on's actions, against a real provider (tests/identity/op.py)."""
    tree, org = t.tree, t.tree.org
    with TestOP("tour") as op:
        op.add_client("mr-acme", "tour-secret", CALLBACK)
        provider = identity_services.identity_provider_create(
            actor=actor,
            organization=org,
            name="Okta",
            discovery_url=op.discovery_url,
            client_id="mr-acme",
            client_secret="tour-secret",
            domains=["acme.example"],
        )
        identity_services.identity_provider_update(
            actor=actor, provider=provider, scopes="openid email", client_secret="tour-secret"
        )
        mapping = identity_services.group_mapping_create(
            actor=actor, provider=provider, group="eng-platform", node=tree.team, role="developer"
        )
        gone = identity_services.group_mapping_create(
            actor=actor, provider=provider, group="all", node=tree.root, role="viewer"
        )
        identity_services.group_mapping_delete(actor=actor, mapping=gone)
        for allowed in (False, True, False):
            identity_services.sso_policy_update(
                actor=actor, organization=org, password_login_allowed=allowed
            )
        op.add_user("erin", email="erin@acme.example", name="Erin", groups=[mapping.group])
        _sso_sign_in(op, t, provider, "erin")
        t.viewer.email = "viewer@acme.example"
        t.viewer.save()
        op.add_user("viewer", email="viewer@acme.example", groups=[])
        _sso_sign_in(op, t, provider, "viewer")


def tour(t: Tenant, *, archive: bool = True) -> dict[str, Any]:
    """Every action the code records, on acme, through the services (make_tenant did the
    creations), the organization archived last unless not ``archive``. Returns what the
    assertions need."""
    tree, org = t.tree, t.tree.org
    ada = UserFactory(
        username="ada", first_name="Ada", last_name="Lovelace", email="ada@example.com"
    )
    services.membership_create(actor=SYSTEM, node=tree.root, user=ada, role=Role.OWNER)
    actor = Actor(user=ada, ip="192.0.2.7")
    identity_tour(t, actor)
    services.organization_update(actor=actor, organization=org, name="Acme Inc", time_zone="UTC")
    services.node_update(actor=actor, node=t.other_dept, name="R&D")
    lab = services.node_create(actor=actor, parent=t.other_dept, name="Lab", slug="lab")
    services.node_move(actor=actor, node=lab, new_parent=tree.dept)
    old = services.node_create(actor=actor, parent=lab, name="Old", slug="old")
    services.node_archive(actor=actor, node=old)
    bob = UserFactory(username="bob", first_name="Bob", email="bob@x.com")
    bob_membership = services.membership_create(
        actor=actor, node=tree.team, user=bob, role=Role.DEVELOPER
    )
    services.membership_update(actor=actor, membership=bob_membership, role=Role.ADMIN)
    services.membership_remove(actor=actor, membership=t.developer_membership)
    invited = services.invitation_create(
        actor=actor, node=tree.project, email="cleo@example.com", role=Role.VIEWER
    )
    cleo = UserFactory(username="cleo", email="cleo@example.com")
    services.invitation_accept(actor=Actor(user=cleo), token=invited.token)
    fresh = services.invitation_create(
        actor=actor, node=tree.team, email="dan@example.com", role=Role.DEVELOPER
    )
    services.invitation_accept_new_user(
        actor=SYSTEM, token=fresh.token, name="Dan", password="a long pass phrase 42"
    )
    services.invitation_revoke(actor=actor, invitation=t.invitation)
    ci = make_key(tree.project, tree.owner_membership, name="ci-bot").api_key
    services.api_key_update(actor=actor, api_key=ci, rpm_limit=60)
    services.api_key_rotate(actor=actor, api_key=ci, grace=dt.timedelta(hours=1))
    services.api_key_revoke(actor=actor, api_key=t.owner_key)
    billing_services.balance_refund(
        actor=SYSTEM, organization=org, amount="5.00", reason="goodwill"
    )
    billing_services.balance_adjust(actor=SYSTEM, organization=org, amount="-1.50", reason="fix")
    checkout = billing_services.checkout_create(actor=actor, organization=org, amount="20.00")
    billing_services.payment_event_apply(
        provider="stripe",
        event={
            "id": "evt_tour",
            "type": "checkout.session.completed",
            "data": {
                "object": {
                    "amount_total": 2000,
                    "currency": "usd",
                    "metadata": {"organization": org.slug},
                    "client_reference_id": checkout.public_id,
                }
            },
        },
    )
    key_budget = billing_services.budget_create(
        actor=actor,
        organization=org,
        scope="key",
        scope_id=ci.pk,
        period="monthly",
        limit_usd="10.00",
    )
    billing_services.budget_update(actor=actor, budget=key_budget, limit_usd="0.0001")
    billing_services.budget_update(actor=actor, budget=t.budget, mode="alert")
    billing_services.budget_delete(actor=actor, budget=t.budget)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    report = report_create(
        actor=actor,
        organization=org,
        node=tree.dept,
        kind="pdf",
        start=start,
        end=start + dt.timedelta(days=31),
    )
    routing_policy_delete(actor=actor, policy=t.policy)
    services.organization_mfa_require(actor=SYSTEM, organization=org, required=True)
    services.organization_mfa_require(actor=SYSTEM, organization=org, required=False)
    bot = services.service_token_create(
        actor=actor,
        node=tree.team,
        name="terraform",
        scopes=["budgets:write", "keys:read"],
        expires_at=timezone.now() + dt.timedelta(days=30),
    ).token
    services.service_token_update(actor=actor, token=bot, expires_at=None)
    services.service_token_revoke(actor=actor, token=bot)
    if archive:
        services.organization_archive(actor=actor, organization=org, revoke_keys=True)
    return {
        "ada": ada,
        "bob": bob_membership,
        "ci": ci,
        "key_budget": key_budget,
        "report": report,
        "bot_expiry": (timezone.now() + dt.timedelta(days=30)).date().isoformat(),
    }


def _by_action(org: Organization) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for line in audit_lines(org, AuditEvent.objects.filter(organization=org)):
        out.setdefault(line.event.action, []).append(line)
    return out


def test_the_tour_renders_every_action_as_a_sentence_without_raw_ids(acme):
    with time_machine.travel(dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC), tick=False):
        tour(acme)
    call_command("seed_scale_org", slug="scale", members=2, teams=1, projects=1, keys=1)
    lines = _by_action(acme.tree.org) | _by_action(Organization.objects.get(slug="scale"))
    assert sorted(set(recorded_actions()) - set(lines)) == []  # the tour covers every action
    for action, rendered in lines.items():
        for line in rendered:
            assert line.parts[0] and not RAW.search(line.text), (action, line.text)
            assert action in line.raw  # the recorded ids stay beside the sentence
    ada = "Ada Lovelace (ada@example.com)"
    bob = next(line for line in lines["membership.create"] if "Bob" in line.text)
    assert bob.text == (
        f"{ada} gave Bob (bob@x.com) the developer role on Engineering \u203a Platform"
    )
    assert lines["budget.update"][1].text == (
        f"{ada} set the monthly budget of the key \u2018ci-bot\u2019 to $0.0001 (was $10.00)"
    )
    assert lines["report.create"][0].text == (
        f"{ada} requested a PDF spend report of Engineering for 2025-01-01 to 2025-01-31 (pending)"
    )
    texts = {action: [line.text for line in rendered] for action, rendered in lines.items()}
    assert texts["membership.update"] == [
        f"{ada} changed the role of Bob (bob@x.com) on Engineering \u203a Platform "
        "from developer to admin"
    ]
    assert texts["membership.remove"] == [
        f"{ada} removed acme-dev (acme-dev@example.com) from "
        "Engineering \u203a Platform \u203a Gateway (was developer)"
    ]
    assert texts["node.move"] == [
        f"{ada} moved the team Engineering \u203a Lab from R&D to Engineering"
    ]
    assert texts["node.archive"] == [
        f"{ada} archived the project Engineering \u203a Lab \u203a Old"
    ]
    assert texts["organization.update"] == [
        f"{ada} changed the settings of Acme Inc: name from Acme to Acme Inc"
    ]
    assert texts["organization.archive"] == [
        f"{ada} archived the organization Acme Inc and revoked 2 keys"
    ]
    assert texts["invitation.accept"] == [
        "Dan (dan@example.com) accepted the invitation for dan@example.com and joined "
        "Engineering \u203a Platform as developer",
        "cleo (cleo@example.com) accepted the invitation for cleo@example.com and joined "
        "Engineering \u203a Platform \u203a Gateway as viewer",
    ]
    assert texts["membership.create"][:2] == [
        "Dan (dan@example.com) joined Engineering \u203a Platform as developer",
        "cleo (cleo@example.com) joined Engineering \u203a Platform \u203a Gateway as viewer",
    ]
    assert texts["user.create"] == [
        "Dan (dan@example.com) created their account from the invitation to "
        "Engineering \u203a Platform"
    ]
    assert texts["api_key.update"] == [
        f"{ada} changed the key \u2018ci-bot\u2019: requests per minute from none to 60"
    ]
    assert texts["api_key.rotate"] == [
        f"{ada} rotated the key \u2018ci-bot\u2019; the old secret works for 1 hour more"
    ]
    assert texts["billing.refund"] == ["System refunded $5.00 (goodwill)"]
    assert texts["billing.adjust"] == ["System adjusted the balance by \u2212$1.50 (fix)"]
    assert texts["billing.payment"] == ["System credited a card payment of $20.00 from stripe"]
    assert texts["budget.delete"] == [
        f"{ada} deleted the monthly budget of the project Engineering \u203a Platform \u203a Gateway"
    ]
    # the event records the node's kind and slug only (routing/policies.py), the policy is gone
    assert texts["routing_policy.delete"] == [
        f"{ada} removed the routing policy of the team \u2018platform\u2019"
    ]
    assert texts["service_token.create"] == [
        f"{ada} created the service token \u2018terraform\u2019 limited to the team "
        "Engineering \u203a Platform with keys:read, budgets:write, expiring 2026-04-09"
    ]
    assert texts["service_token.update"] == [
        f"{ada} set the service token \u2018terraform\u2019 to never expire (was 2026-04-09)"
    ]
    assert texts["service_token.revoke"] == [
        f"{ada} revoked the service token \u2018terraform\u2019"
    ]
    assert texts["identity_provider.create"] == [
        f"{ada} added the identity provider \u2018Okta\u2019 for acme.example"
    ]
    assert texts["identity_provider.update"] == [
        f"{ada} changed the identity provider \u2018Okta\u2019: scopes from "
        "openid email profile to openid email, a new client secret"
    ]
    assert texts["group_mapping.create"][-1] == (
        f"{ada} mapped the group eng-platform of the identity provider \u2018Okta\u2019 to "
        "developer on Engineering \u203a Platform"
    )
    assert texts["group_mapping.delete"] == [
        f"{ada} stopped mapping the group all of the identity provider \u2018Okta\u2019 to "
        "viewer on Acme"  # the root node keeps the name it was created with
    ]
    assert texts["sso_policy.update"] == [
        f"{ada} required single sign-on (no password login) for the members of Acme Inc",
        f"{ada} allowed password login again for the members of Acme Inc",
        f"{ada} required single sign-on (no password login) for the members of Acme Inc",
    ]
    assert texts["sso.account_create"] == [
        "Erin (erin@acme.example) created their account by single sign-on through the "
        "identity provider \u2018Okta\u2019"
    ]
    assert texts["sso.account_link"] == [
        "acme-viewer (viewer@acme.example) linked their existing account to the identity "
        "provider \u2018Okta\u2019"
    ]
    assert texts["sso.login"] == [
        "acme-viewer (viewer@acme.example) signed in with single sign-on through the "
        "identity provider \u2018Okta\u2019 (no mapped group)",
        "Erin (erin@acme.example) signed in with single sign-on through the identity "
        "provider \u2018Okta\u2019 (mapped groups: eng-platform); joined "
        "Engineering \u203a Platform as developer",
    ]
    assert texts["organization.seed_scale"] == [
        "System seeded Scale scale with 2 members, 1 department, 1 team, 1 project and 1 key"
    ]


def _refs(line: Any) -> dict[str, str]:
    return {p.text: p.url for p in line.parts if isinstance(p, Ref)}


def test_objects_link_to_their_console_pages(acme):
    seen = tour(acme)
    lines = _by_action(acme.tree.org)
    o, tree = "/o/acme", acme.tree
    bob = next(line for line in lines["membership.create"] if "Bob" in line.text)
    assert _refs(bob) == {
        "Bob (bob@x.com)": f"{o}/members/?q=bob",
        "Engineering \u203a Platform": f"{o}/nodes/{tree.team.pk}/",
    }
    # a removed membership is no longer on the members page: named, not linked
    assert _refs(lines["membership.remove"][0])["acme-dev (acme-dev@example.com)"] == ""
    key = seen["ci"].pk
    assert _refs(lines["api_key.update"][0]) == {"\u2018ci-bot\u2019": f"{o}/keys/{key}/"}
    assert _refs(lines["budget.update"][1]) == {
        "monthly budget": f"{o}/budgets/{seen['key_budget'].pk}/",
        "\u2018ci-bot\u2019": f"{o}/keys/{key}/",
    }
    # the deleted budget is named, not linked; its project still is
    assert _refs(lines["budget.delete"][0]) == {
        "monthly budget": "",
        "Engineering \u203a Platform \u203a Gateway": f"{o}/nodes/{tree.project.pk}/",
    }
    assert _refs(lines["report.create"][0]) == {
        "PDF spend report": f"{o}/reports/",
        "Engineering": f"{o}/nodes/{tree.dept.pk}/",
    }
    invitation = next(line for line in lines["invitation.create"] if "cleo" in line.text)
    assert _refs(invitation)["cleo@example.com"] == f"{o}/invitations/"
    assert _refs(lines["billing.checkout"][0]) == {"$20.00": f"{o}/billing/"}
    assert _refs(lines["organization.update"][0]) == {"Acme Inc": f"{o}/"}
    html = str(lines["budget.update"][1].html)
    assert f'<a href="{o}/budgets/{seen["key_budget"].pk}/">monthly budget</a>' in html


def test_routing_policy_links_to_its_row_on_the_policies_page(acme):
    line = _by_action(acme.tree.org)["routing_policy.set"][0]
    assert _refs(line) == {
        "routing policy": f"/o/acme/policies/?node={acme.tree.team.pk}",
        "Engineering \u203a Platform": f"/o/acme/nodes/{acme.tree.team.pk}/",
    }


def test_names_are_escaped_in_the_html(acme):
    services.node_update(actor=SYSTEM, node=acme.other_dept, name="<b>R&D</b>")
    line = audit_lines(acme.tree.org, AuditEvent.objects.filter(action="node.update"))[0]
    assert "&lt;b&gt;R&amp;D&lt;/b&gt;</a>" in str(line.html)
    assert "<b>" not in str(line.html)


# -- deleted objects, other tenants ---------------------------------------------------------


def test_deleted_objects_read_as_recorded_or_deleted_never_an_error(acme):
    budget = billing_services.budget_create(
        actor=SYSTEM,
        organization=acme.tree.org,
        scope="key",
        scope_id=acme.developer_key.pk,
        period="daily",
        limit_usd="1.00",
    )
    Budget.objects.filter(pk=budget.pk).delete()
    ApiKey.objects.filter(pk=acme.developer_key.pk).delete()
    with_key = AuditEvent.objects.filter(organization=acme.tree.org)
    texts = {
        line.event.action + line.event.target_id: line.text
        for line in audit_lines(acme.tree.org, with_key)
    }
    key_id = acme.developer_key.pk
    # the key's own event keeps the name it recorded; the budget names the key by id
    assert texts[f"api_key.create{key_id}"] == (
        "System created the key \u2018dev key\u2019 in the project "
        "Engineering \u203a Platform \u203a Gateway"
    )
    assert texts[f"budget.create{budget.pk}"] == (
        f"System created the daily budget of a deleted key (id {key_id}) with a limit of $1.00"
    )
    # nothing recorded at all: the kind and the id
    with_nothing = AuditEvent(
        organization=acme.tree.org,
        actor_label="system",
        action="api_key.revoke",
        target_type="apikey",
        target_id="999",
        changes={},
    )
    gone_budget = AuditEvent(
        organization=acme.tree.org,
        actor_label="ghost",
        action="budget.update",
        target_type="budget",
        target_id="998",
        changes={"limit_usd": ["1", "2"]},
    )
    unknown = AuditEvent(organization=acme.tree.org, actor_label="system", action="x.y")
    assert [
        line.text for line in audit_lines(acme.tree.org, [with_nothing, gone_budget, unknown])
    ] == [
        "System revoked a deleted key (id 999)",
        "ghost (a deleted user) set a deleted budget (id 998) to $2.00 (was $1.00)",
        "System recorded x.y",
    ]


def test_names_resolve_only_within_the_events_organization(acme):
    """Globex's rows share no ids with acme's names: an acme event pointing at globex's ids
    (forged here, as colliding ids would) reads as deleted, never with globex's names."""
    globex = make_tenant("globex")
    secret_key = make_key(globex.tree.project, globex.tree.owner_membership, name="globex-secret")
    with_ids_of_globex = []
    with transaction.atomic():
        for action, target_type, target_id, changes in [
            ("api_key.update", "apikey", secret_key.api_key.pk, {"rpm_limit": [1, 2]}),
            (
                "membership.update",
                "membership",
                globex.developer_membership.pk,
                {"role": ["a", "b"]},
            ),
            ("node.update", "node", globex.other_dept.pk, {}),
            ("budget.update", "budget", globex.budget.pk, {"mode": ["block", "alert"]}),
            ("invitation.revoke", "invitation", globex.invitation.pk, {}),
            ("routing_policy.set", "routingpolicy", globex.policy.pk, {}),
            (
                "api_key.create",
                "apikey",
                secret_key.api_key.pk,
                {"project": globex.tree.project.pk},
            ),
        ]:
            with_ids_of_globex.append(
                audit_event_record(
                    organization=acme.tree.org,
                    actor=SYSTEM,
                    action=action,
                    target_type=target_type,
                    target_id=target_id,
                    changes=changes,
                )
            )
    lines = audit_lines(acme.tree.org, with_ids_of_globex)
    text = " | ".join(line.text for line in lines)
    for name in ("globex", "Globex", "new@globex.example", "Research"):
        assert name not in text
    assert lines[0].text == (
        f"System changed a deleted key (id {secret_key.api_key.pk}): "
        "requests per minute from 1 to 2"
    )
    assert all(not ref.url for line in lines for ref in line.parts if isinstance(ref, Ref))


# -- queries and pages ----------------------------------------------------------------------


def test_a_page_of_fifty_events_resolves_in_a_bounded_number_of_queries(
    acme, django_assert_max_num_queries
):
    tour(acme)
    for i in range(10):
        member = add_member(acme.tree.team, Role.DEVELOPER, UserFactory(username=f"m{i}"))
        make_key(acme.tree.project, member, name=f"k{i}")
    events = list(AuditEvent.objects.filter(organization=acme.tree.org)[:50])
    assert len(events) == 50
    # events, budgets, reports, policies, invitations, memberships+users, keys, nodes,
    # their ancestors, actors: one query each whatever the number of events
    with django_assert_max_num_queries(10):
        lines = audit_lines(acme.tree.org, events)
        assert [line.text for line in lines]
    with django_assert_max_num_queries(10):
        audit_lines(acme.tree.org, AuditEvent.objects.filter(organization=acme.tree.org)[:5])


def test_audit_page_and_overview_show_the_same_sentences(acme):
    client = login(acme.tree.owner)
    page = client.get("/o/acme/audit/").content.decode()
    overview = client.get("/o/acme/")
    first = overview.context["recent"][0]
    assert first.text == (
        "System set the routing policy of the team Engineering \u203a Platform: "
        "strategy from none to cost"
    )
    html = str(first.html)
    assert html in page and html in overview.content.decode()
    assert f'<a href="/o/acme/nodes/{acme.tree.team.pk}/">Engineering \u203a Platform</a>' in html
    # the raw ids beside it: a monospace line on the log, the title on the overview
    assert (
        f'<code>routing_policy.set</code><span class="mono"> \u00b7 routingpolicy #{acme.policy.pk}'
        " \u00b7 team:platform</span>"
    ) in page
    assert (
        f'title="routing_policy.set \u00b7 routingpolicy #{acme.policy.pk} \u00b7 team:platform"'
        in (overview.content.decode())
    )


def test_the_audit_page_costs_about_the_same_queries_for_4_or_50_events(acme):
    client = login(acme.tree.owner)
    with CaptureQueriesContext(connection) as few:
        client.get("/o/acme/audit/?action=membership.create")
    tour(acme, archive=False)
    for i in range(20):
        member = add_member(acme.tree.team, Role.DEVELOPER, UserFactory(username=f"m{i}"))
        make_key(acme.tree.project, member, name=f"k{i}")
    with CaptureQueriesContext(connection) as many:
        response = client.get("/o/acme/audit/")
    assert len(response.context["lines"]) == 50
    assert len(many) <= len(few) + 5  # the kinds the 5 membership events do not name
