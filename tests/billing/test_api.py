"""Billing management API: behaviour, permissions, and tenant isolation (404 across orgs)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from billing import services
from billing.models import (
    BillingAccount,
    Budget,
    Checkout,
    LedgerEntry,
    Notification,
    UsageRecord,
)
from orgs.models import AuditEvent, Role
from tests.billing.factories import budget, make_world
from tests.orgs.factories import add_member

pytestmark = pytest.mark.django_db
D = Decimal


def login(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def snapshot():
    return {
        "accounts": list(BillingAccount.objects.order_by("id").values()),
        "ledger": list(LedgerEntry.objects.order_by("id").values()),
        "budgets": list(Budget.objects.order_by("id").values()),
        "audit": AuditEvent.objects.count(),
    }


@pytest.fixture
def worlds():
    a = make_world("alpha", balance="100")
    b = make_world("beta", balance="70")
    b_budget = budget(b, "team", "5")
    Notification.objects.create(organization=b.org, kind="budget_threshold", title="b note")
    UsageRecord.objects.create(
        request_id="b-req", organization=b.org, cost=D("0.1"), created_at=timezone.now()
    )
    return {"a": a, "b": b, "b_budget": b_budget}


ROLES_AT_ROOT = (Role.OWNER, Role.ADMIN, Role.BILLING_MANAGER, Role.VIEWER)
CREDIT_CALLS = (
    ("/api/orgs/{org}/billing/topups/", {"amount": "1000000.00", "reference": "MINT-1"}),
    ("/api/orgs/{org}/billing/refunds/", {"amount": "-1000000", "reason": "mint"}),
    ("/api/orgs/{org}/billing/adjustments/", {"amount": "1000000.00", "reason": "mint"}),
)


def test_balance_and_ledger_read_and_no_tenant_role_can_credit(worlds):
    """Only real money raises a balance: no tenant role (the owner included) has an endpoint
    that credits, refunds or adjusts, in its own organization or another's."""
    a = worlds["a"]
    client = login(a.tree.owner)
    response = client.get("/api/orgs/alpha/billing/balance/")
    assert response.status_code == 200
    assert response.json() == {
        "organization": "alpha",
        "currency": "USD",
        "balance": "100.000000000000",
        "pending": "0.000000000000",
        "available": "100.000000000000",
    }
    users = [a.tree.owner] + [add_member(a.tree.root, r).user for r in ROLES_AT_ROOT[1:]]
    users.append(add_member(a.tree.team, Role.DEVELOPER).user)
    before = snapshot()
    for user in users:
        c = login(user)
        for org in ("alpha", "beta"):
            for url, body in CREDIT_CALLS:
                r = c.post(url.format(org=org), body, format="json")
                assert r.status_code in (404, 405), (user.username, url, r.status_code)
    assert snapshot() == before
    ledger = client.get("/api/orgs/alpha/billing/ledger/").json()
    assert [(e["kind"], e["amount"]) for e in ledger["results"]] == [("topup", "100.000000000000")]
    only = client.get("/api/orgs/alpha/billing/ledger/?kind=refund").json()
    assert only["count"] == 0
    assert services.account_check() == []


def test_billing_managers_start_checkouts_nothing_is_credited_until_paid(worlds, settings):
    settings.BILLING_CHECKOUT_URL = "https://pay.example/{id}?amount={cents}&org={organization}"
    a = worlds["a"]
    manager = add_member(a.tree.root, Role.BILLING_MANAGER).user
    viewer = add_member(a.tree.root, Role.VIEWER).user
    developer = add_member(a.tree.team, Role.DEVELOPER).user
    before = snapshot()
    for user, expected in ((viewer, 403), (developer, 403)):
        r = login(user).post("/api/orgs/alpha/billing/checkouts/", {"amount": "100"}, format="json")
        assert r.status_code == expected
    assert snapshot() == before
    for user in (a.tree.owner, manager):
        r = login(user).post("/api/orgs/alpha/billing/checkouts/", {"amount": "100"}, format="json")
        assert r.status_code == 201, r.content
        body = r.json()
        assert (body["status"], body["amount"]) == ("open", "100.000000000000")
        assert body["pay_url"] == f"https://pay.example/{body['checkout']}?amount=10000&org=alpha"
    after = snapshot()
    assert (after["accounts"], after["ledger"]) == (before["accounts"], before["ledger"])
    assert login(viewer).get("/api/orgs/alpha/billing/checkouts/").json()["count"] == 2
    bad = login(manager).post("/api/orgs/alpha/billing/checkouts/", {"amount": "1"}, format="json")
    assert bad.status_code == 400 and "amount" in bad.json()
    # another organization's owner sees and starts nothing here
    other = login(worlds["b"].tree.owner)
    assert other.get("/api/orgs/alpha/billing/checkouts/").status_code == 404
    assert (
        other.post("/api/orgs/alpha/billing/checkouts/", {"amount": "9"}, format="json").status_code
        == 404
    )
    checkout = Checkout.objects.filter(organization=a.org).first()
    assert (
        login(a.tree.owner).get(f"/api/orgs/alpha/billing/checkouts/{checkout.pk}/").status_code
        == 200
    )
    assert other.get(f"/api/orgs/beta/billing/checkouts/{checkout.pk}/").status_code == 404


def test_bad_amounts_are_400_and_change_nothing(worlds):
    client = login(worlds["a"].tree.owner)
    before = snapshot()
    for url, body, field in [
        ("/api/orgs/alpha/billing/checkouts/", {"amount": "-10"}, "amount"),
        ("/api/orgs/alpha/billing/checkouts/", {"amount": 10.5}, "amount"),
        ("/api/orgs/alpha/billing/checkouts/", {}, "amount"),
        (
            "/api/orgs/alpha/budgets/",
            {"scope": "team", "scope_id": 0, "period": "daily", "limit_usd": "1"},
            "scope_id",
        ),
        (
            "/api/orgs/alpha/budgets/",
            {"scope": "organization", "period": "daily", "limit_usd": "-1"},
            "limit_usd",
        ),
        (
            "/api/orgs/alpha/budgets/",
            {"scope": "nope", "period": "daily", "limit_usd": "1"},
            "scope",
        ),
    ]:
        r = client.post(url, body, format="json")
        assert r.status_code == 400, (url, body, r.content)
        assert field in r.json(), r.json()
    assert snapshot() == before


def test_budget_crud_shows_current_spend(worlds):
    a = worlds["a"]
    client = login(a.tree.owner)
    r = client.post(
        "/api/orgs/alpha/budgets/",
        {
            "scope": "key",
            "scope_id": a.key_id,
            "period": "daily",
            "limit_usd": "2.50",
            "mode": "alert",
            "thresholds": [75],
        },
        format="json",
    )
    assert r.status_code == 201, r.content
    created = r.json()
    assert (created["scope"], created["scope_id"], created["node"], created["limit_usd"]) == (
        "key",
        a.key_id,
        a.tree.project.pk,
        "2.500000000000",
    )
    assert (created["mode"], created["thresholds"], created["spent"]) == ("alert", [75], "0")
    bid = created["id"]
    r = client.patch(f"/api/orgs/alpha/budgets/{bid}/", {"limit_usd": "3"}, format="json")
    assert r.json()["limit_usd"] == "3.000000000000"
    r = client.patch(f"/api/orgs/alpha/budgets/{bid}/", {"period": "weekly"}, format="json")
    assert r.status_code == 400
    listed = client.get("/api/orgs/alpha/budgets/?scope=key").json()
    assert [b["id"] for b in listed["results"]] == [bid]
    assert client.delete(f"/api/orgs/alpha/budgets/{bid}/").status_code == 204
    assert not Budget.objects.filter(pk=bid).exists()


def test_budget_list_query_count_does_not_grow(worlds):
    a = worlds["a"]
    client = login(a.tree.owner)
    budget(a, "team", "1")
    with CaptureQueriesContext(connection) as few:
        assert client.get("/api/orgs/alpha/budgets/").status_code == 200
    for scope in ("organization", "department", "project", "member", "key"):
        budget(a, scope, "1")
    with CaptureQueriesContext(connection) as many:
        assert len(client.get("/api/orgs/alpha/budgets/").json()["results"]) == 6
    assert len(many) == len(few)


def test_roles_viewer_reads_billing_manager_writes_developer_neither(worlds):
    a = worlds["a"]
    viewer = add_member(a.tree.root, Role.VIEWER).user
    manager = add_member(a.tree.root, Role.BILLING_MANAGER).user
    developer = add_member(a.tree.team, Role.DEVELOPER).user
    before = snapshot()
    v = login(viewer)
    assert v.get("/api/orgs/alpha/billing/balance/").status_code == 200
    assert v.get("/api/orgs/alpha/billing/ledger/").status_code == 200
    r = v.post("/api/orgs/alpha/billing/checkouts/", {"amount": "10"}, format="json")
    assert r.status_code == 403
    r = v.post(
        "/api/orgs/alpha/budgets/",
        {"scope": "organization", "period": "daily", "limit_usd": "1"},
        format="json",
    )
    assert r.status_code == 403
    d = login(developer)
    assert d.get("/api/orgs/alpha/billing/balance/").status_code == 403
    assert d.get("/api/orgs/alpha/billing/ledger/").status_code == 403
    assert snapshot() == before
    m = login(manager)
    r = m.post("/api/orgs/alpha/billing/checkouts/", {"amount": "10"}, format="json")
    assert r.status_code == 201


def test_team_billing_manager_cannot_budget_another_team(worlds):
    a = worlds["a"]
    from orgs import services as org_services
    from tests.billing.factories import SYSTEM

    other_team = org_services.node_create(
        actor=SYSTEM, parent=a.tree.dept, name="Other", slug="other"
    )
    manager = add_member(a.tree.team, Role.BILLING_MANAGER).user
    client = login(manager)
    before = snapshot()
    r = client.post(
        "/api/orgs/alpha/budgets/",
        {"scope": "team", "scope_id": other_team.pk, "period": "daily", "limit_usd": "1"},
        format="json",
    )
    assert r.status_code == 403
    assert snapshot() == before
    r = client.post(
        "/api/orgs/alpha/budgets/",
        {"scope": "team", "scope_id": a.tree.team.pk, "period": "daily", "limit_usd": "1"},
        format="json",
    )
    assert r.status_code == 201


def test_org_a_gets_404_for_everything_of_org_b(worlds):
    client = login(worlds["a"].tree.owner)
    b = worlds["b"]
    bid = worlds["b_budget"].pk
    entry = LedgerEntry.objects.filter(organization=b.org).first().pk
    before = snapshot()
    calls = [
        ("get", "/api/orgs/beta/billing/balance/", None),
        ("get", "/api/orgs/beta/billing/checkouts/", None),
        ("post", "/api/orgs/beta/billing/checkouts/", {"amount": "10"}),
        ("get", "/api/orgs/beta/billing/ledger/", None),
        ("get", f"/api/orgs/beta/billing/ledger/{entry}/", None),
        ("get", "/api/orgs/beta/billing/notifications/", None),
        ("get", "/api/orgs/beta/usage/", None),
        ("get", "/api/orgs/beta/budgets/", None),
        (
            "post",
            "/api/orgs/beta/budgets/",
            {"scope": "organization", "period": "daily", "limit_usd": "1"},
        ),
        ("get", f"/api/orgs/beta/budgets/{bid}/", None),
        ("patch", f"/api/orgs/beta/budgets/{bid}/", {"limit_usd": "999"}),
        ("delete", f"/api/orgs/beta/budgets/{bid}/", None),
        # org B's ids through org A's URLs
        ("get", f"/api/orgs/alpha/billing/ledger/{entry}/", None),
        ("get", f"/api/orgs/alpha/budgets/{bid}/", None),
        ("patch", f"/api/orgs/alpha/budgets/{bid}/", {"limit_usd": "999"}),
        ("delete", f"/api/orgs/alpha/budgets/{bid}/", None),
    ]
    for method, url, body in calls:
        r = getattr(client, method)(url, body, format="json")
        assert r.status_code == 404, (method, url, r.status_code)
        assert r.json() == {"detail": "Not found.", "code": "not_found"}
    # lists in org A never show org B's rows
    assert client.get("/api/orgs/alpha/billing/notifications/").json()["count"] == 0
    assert client.get("/api/orgs/alpha/usage/").json()["count"] == 0
    # org B's team as a budget scope from org A: unknown scope
    r = client.post(
        "/api/orgs/alpha/budgets/",
        {"scope": "team", "scope_id": b.tree.team.pk, "period": "daily", "limit_usd": "1"},
        format="json",
    )
    assert r.status_code == 400
    assert snapshot() == before


def test_anonymous_is_refused():
    assert APIClient().get("/api/orgs/alpha/billing/balance/").status_code in (401, 403)
