"""Budgets, balance and ledger, usage and notifications in the console, over billing's own
services (the usage comes through the database admission backend and the usage poster)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from billing.alerts import budget_alerts_evaluate
from billing.analytics.rollups import rollup_advance
from billing.models import Budget, Checkout, LedgerEntry, Notification
from billing.reports.csv_export import COLUMNS
from console.views.billing import spend_bar
from tests.console.factories import Tenant, make_tenant, spend

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def acme() -> Tenant:
    return make_tenant("acme")


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_spend_bar_levels():
    assert spend_bar(D("10"), D("0"), [50, 80, 100]) == {
        "percent": D("0.0"),
        "fill": D("0.0"),
        "level": "ok",
        "ticks": [50, 80],
        "remaining": D("10"),
    }
    assert spend_bar(D("10"), D("6"), [50, 80, 100])["level"] == "warn"
    over = spend_bar(D("10"), D("12.5"), [50, 80, 100])
    assert (over["percent"], over["fill"], over["level"], over["remaining"]) == (
        D("125.0"),
        D("100.0"),
        "over",
        D("0"),
    )
    assert spend_bar(D("0"), D("0.01"), [])["level"] == "over"


def test_budget_list_shows_spend_against_the_limit(acme):
    spend(acme.tree.project, acme.developer_membership, acme.developer_key, "6.25")
    response = login(acme.viewer).get("/o/acme/budgets/")
    [row] = response.context["rows"]
    assert (row["target"], row["spent"], row["bar"]["percent"], row["bar"]["level"]) == (
        "Gateway",
        D("6.25"),
        D("62.5"),
        "warn",
    )
    body = response.content.decode()
    assert "$6.25" in body and "width:62.5%" in body
    assert row["can_manage"] is False


def test_budget_create_update_delete(acme):
    client = login(acme.tree.owner)
    data = {
        "target": f"member:{acme.developer_membership.pk}",
        "name": "Dev cap",
        "period": "daily",
        "limit_usd": "2.5",
        "mode": "alert",
        "thresholds": "80, 50",
        "notify_emails": "ops@acme.example\nlead@acme.example",
    }
    response = client.post("/o/acme/budgets/", data)
    assert response["Location"] == "/o/acme/budgets/"
    b = Budget.objects.get(name="Dev cap")
    assert (b.scope, b.scope_id, b.node_id, b.period, b.limit_usd, b.mode, b.thresholds) == (
        "member",
        acme.developer_membership.pk,
        acme.tree.project.pk,
        "daily",
        D("2.5"),
        "alert",
        [50, 80],
    )
    assert b.notify_emails == ["ops@acme.example", "lead@acme.example"]
    rows = login(acme.tree.owner).get("/o/acme/budgets/").context["rows"]
    assert [r["target"] for r in rows] == ["member acme-dev", "Gateway"]  # by node, then scope

    response = client.post(
        f"/o/acme/budgets/{b.pk}/update/",
        {"name": "Dev cap", "limit_usd": "3", "mode": "block", "thresholds": "100"},
    )
    assert response.status_code == 302
    b.refresh_from_db()
    assert (b.limit_usd, b.mode, b.thresholds, b.notify_emails) == (D("3"), "block", [100], [])
    # amounts read as plain decimals, sub-cent ones too: "50", not "5E+1"; "$0.000001", not
    # "$0.00"
    for limit, field, shown in (("50", "50", "$50.00"), ("0.000001", "0.000001", "$0.000001")):
        client.post(
            f"/o/acme/budgets/{b.pk}/update/",
            {"name": "Dev cap", "limit_usd": limit, "mode": "block", "thresholds": "100"},
        )
        page = client.get(f"/o/acme/budgets/{b.pk}/")
        assert page.context["form"]["limit_usd"].value() == field
        html = page.content.decode()
        assert f'value="{field}"' in html and f">{shown}</span>" in html
        assert "E+" not in html

    response = client.post(f"/o/acme/budgets/{b.pk}/delete/")
    assert response.status_code == 302
    assert not Budget.objects.filter(pk=b.pk).exists()


def test_a_tag_budget_from_the_console(acme):
    """Organization-wide billing managers pick "Request tags" and give the tag; a bad tag is
    the field's error; someone managing billing below the root is not offered the choice."""
    client = login(acme.tree.owner)
    page = client.get("/o/acme/budgets/").content.decode()
    assert 'value="tag:0"' in page and 'name="tag"' in page
    data = {
        "target": "tag:0",
        "tag": "feature=search",
        "period": "monthly",
        "limit_usd": "20",
        "mode": "block",
        "thresholds": "50, 80, 100",
    }
    bad = client.post("/o/acme/budgets/", {**data, "tag": "feature"})
    assert bad.status_code == 400 and "tag" in bad.context["form"].errors
    assert not Budget.objects.filter(scope="tag").exists()
    assert client.post("/o/acme/budgets/", data)["Location"] == "/o/acme/budgets/"
    b = Budget.objects.get(scope="tag")
    assert (b.tag, b.node_id, b.limit_usd) == ("feature=search", acme.tree.root.pk, D("20"))
    rows = client.get("/o/acme/budgets/").context["rows"]
    assert "requests tagged feature=search" in [r["target"] for r in rows]
    admin_page = login(acme.admin).get("/o/acme/budgets/").content.decode()
    assert 'value="tag:0"' not in admin_page  # a department admin's budgets stay in its tree


def test_budget_field_errors_change_nothing(acme):
    client = login(acme.tree.owner)
    before = list(Budget.objects.values_list("id", "limit_usd"))
    response = client.post(
        "/o/acme/budgets/",
        {
            "target": f"team:{acme.tree.team.pk}",
            "period": "monthly",
            "limit_usd": "-1",
            "mode": "block",
            "thresholds": "half",
        },
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert errors == {
        "limit_usd": ["Ensure this value is greater than or equal to 0."],
        "thresholds": ["Whole percentages, e.g. 50, 80, 100."],
    }
    response = client.post(
        f"/o/acme/budgets/{acme.budget.pk}/update/",
        {"limit_usd": "5", "mode": "block", "thresholds": "0, 2000"},
    )
    assert response.status_code == 400
    assert response.context["form"].errors == {
        "thresholds": ["A list of up to 10 whole percentages from 1 to 1000."]
    }
    # a budget target of another organization is not a choice
    other = make_tenant("other")
    response = client.post(
        "/o/acme/budgets/",
        {
            "target": f"project:{other.tree.project.pk}",
            "period": "monthly",
            "limit_usd": "1",
            "mode": "block",
            "thresholds": "50",
        },
    )
    assert response.status_code == 400
    assert "target" in response.context["form"].errors
    assert (
        list(Budget.objects.filter(organization=acme.tree.org).values_list("id", "limit_usd"))
        == before
    )


def test_balance_ledger_and_buying_credit_starts_a_checkout_that_credits_nothing(acme, settings):
    settings.BILLING_CHECKOUT_URL = "https://pay.example/{id}?cents={cents}"
    spend(acme.tree.project, acme.developer_membership, acme.developer_key, "1.5")
    client = login(acme.tree.owner)
    page = client.get("/o/acme/billing/")
    summary = page.context["summary"]
    assert (summary["balance"], summary["pending"], summary["available"]) == (
        D("98.5"),
        D("0"),
        D("98.5"),
    )
    assert "Record a top-up" not in page.content.decode()  # no tenant form credits
    entries = [(e.kind, e.amount, e.balance_after) for e in page.context["page"].object_list]
    assert entries == [("usage", D("-1.5"), D("98.5")), ("topup", D("100"), D("100"))]
    response = client.post("/o/acme/billing/", {"amount": "40"})
    checkout = Checkout.objects.get(organization=acme.tree.org)
    assert response["Location"] == f"https://pay.example/{checkout.public_id}?cents=4000"
    assert (checkout.status, checkout.amount, checkout.created_by) == (
        "open",
        D("40"),
        acme.tree.owner,
    )
    assert LedgerEntry.objects.filter(organization=acme.tree.org).count() == 2  # nothing credited
    listed = client.get("/o/acme/billing/").context["checkouts"]
    assert [(r["c"].public_id, r["pay_url"]) for r in listed] == [
        (checkout.public_id, response["Location"])
    ]
    response = client.get("/o/acme/billing/?kind=topup")
    assert [e.reference for e in response.context["page"].object_list] == ["wire-acme"]
    bad = client.post("/o/acme/billing/", {"amount": "1"})
    assert bad.status_code == 400
    assert set(bad.context["form"].errors) == {"amount"}
    # a viewer sees the balance but cannot start a purchase; a developer sees nothing
    assert login(acme.viewer).post("/o/acme/billing/", {"amount": "40"}).status_code == 403
    assert Checkout.objects.count() == 1
    assert login(acme.developer).get("/o/acme/billing/").status_code == 403


def test_the_platform_section_is_for_operators_only(acme):
    from django.contrib.auth.models import Permission

    from tests.console.factories import UserFactory

    before = list(LedgerEntry.objects.order_by("id").values_list("id", "amount"))
    body = {"organization": acme.tree.org.pk, "kind": "transfer", "amount": "1000000",
            "reference": "MINT", "reason": ""}  # fmt: skip
    for user in (acme.tree.owner, UserFactory(username="staff-no-perm", is_staff=True)):
        client = login(user)
        assert client.get("/platform/billing/").status_code == 403
        assert client.post("/platform/billing/", body).status_code == 403
    assert list(LedgerEntry.objects.order_by("id").values_list("id", "amount")) == before
    operator = UserFactory(username="ops", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="credit_balance"))
    client = login(operator)
    assert client.get("/platform/billing/").status_code == 200
    body = {**body, "amount": "250", "reference": "BANK-1"}
    response = client.post("/platform/billing/", body, follow=True)
    assert response.status_code == 200
    entry = LedgerEntry.objects.filter(organization=acme.tree.org).first()
    assert (entry.kind, entry.amount, entry.reference, entry.created_by) == (
        "topup",
        D("250"),
        "BANK-1",
        operator,
    )
    again = client.post("/platform/billing/", body)  # a reference is credited once
    assert again.status_code == 400
    assert again.context["form"].errors == {
        "reference": ["This bank reference was already credited."]
    }
    assert LedgerEntry.objects.filter(organization=acme.tree.org).count() == 2


def test_usage_dashboard_totals_chart_and_csv(acme):
    spend(
        acme.tree.project, acme.developer_membership, acme.developer_key, "0.25", tokens=(1000, 200)
    )
    spend(
        acme.tree.project, acme.developer_membership, acme.owner_key, "0.75", model="zeta/z-large"
    )
    spend(
        acme.tree.project, acme.developer_membership, acme.owner_key, "0", status="upstream_error"
    )
    assert rollup_advance(lag_seconds=0) == 3  # the figures read the rollups, like the API
    client = login(acme.viewer)
    response = client.get("/o/acme/usage/")
    totals = response.context["totals"]
    assert (totals["requests"], totals["tokens_in"], totals["tokens_out"], totals["cost"]) == (
        3,
        1200,
        300,
        D("1.00"),
    )
    assert totals["errors"] == 1
    assert [(r["model"], r["requests"], r["cost"]) for r in response.context["by_model"]] == [
        ("zeta/z-large", 1, D("0.75")),
        ("acme-ai/swift-1", 2, D("0.25")),
    ]
    assert [(r["name"], r["cost"]) for r in response.context["by_project"]] == [
        ("Gateway", D("1.00"))
    ]
    bars = response.context["chart"]["bars"]
    assert len(bars) == 30 and bars[-1]["cost"] == D("1.00") and bars[-1]["h"] == 160.0
    assert sum(b["h"] for b in bars[:-1]) == 0
    response = client.get("/o/acme/usage/?model=zeta/z-large")
    assert response.context["totals"]["requests"] == 1
    csv_response = client.get("/o/acme/usage/?" + response.context["csv_query"])
    assert csv_response["Content-Type"] == "text/csv; charset=utf-8"
    lines = b"".join(csv_response.streaming_content).decode().strip().splitlines()
    # the CSV a report has: the same 25 columns, savings and tags included
    assert lines[0] == ",".join(COLUMNS)
    assert len(lines) == 2
    assert ",zeta/z-large,zeta," in lines[1] and ",100,50,0,0.750000000000," in lines[1]
    assert client.get("/o/acme/usage/?from=2026-02-10&to=2026-02-01").status_code == 400
    assert login(acme.developer).get("/o/acme/usage/").status_code == 403


def test_budget_alerts_become_notifications(acme):
    spend(acme.tree.project, acme.developer_membership, acme.developer_key, "8.5")
    alerts = budget_alerts_evaluate()
    assert sorted(a.threshold for a in alerts) == [50, 80]
    response = login(acme.viewer).get("/o/acme/notifications/")
    titles = [n.title for n in response.context["page"].object_list]
    assert sorted(titles) == [
        "project budget reached 50% of its limit",
        "project budget reached 80% of its limit",
    ]
    assert Notification.objects.filter(organization=acme.tree.org).count() == 2
    detail = login(acme.viewer).get(f"/o/acme/budgets/{acme.budget.pk}/")
    assert [a.threshold for a in detail.context["alerts"]] == [80, 50]
