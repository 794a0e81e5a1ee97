"""Budgets: validation, periods in the organization's time zone, threshold alerts."""

from __future__ import annotations

import datetime as dt
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail

from billing import services, webhooks
from billing.alerts import budget_alerts_evaluate
from billing.errors import InvalidInput
from billing.models import Budget, BudgetAlert, BudgetUsage, Notification
from billing.periods import LIFETIME_START, period_bounds
from billing.tasks import budget_alerts_check, budget_periods_roll
from orgs.models import AuditEvent
from tests.billing.factories import SYSTEM, budget, make_world

D = Decimal
UTC = dt.UTC


def test_periods_follow_the_organization_time_zone():
    now = dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 in Paris, DST starts at 02:00
    start, end = period_bounds("daily", now, "Europe/Paris")
    assert (start, end) == (
        dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
        dt.datetime(2026, 3, 29, 22, 0, tzinfo=UTC),  # a 23-hour day
    )
    start, end = period_bounds("weekly", now, "Europe/Paris")  # Monday 23 March
    assert (start, end) == (
        dt.datetime(2026, 3, 22, 23, 0, tzinfo=UTC),
        dt.datetime(2026, 3, 29, 22, 0, tzinfo=UTC),
    )
    start, end = period_bounds(
        "monthly", dt.datetime(2026, 12, 31, 23, 0, tzinfo=UTC), "Asia/Tokyo"
    )
    assert (start, end) == (
        dt.datetime(2026, 12, 31, 15, 0, tzinfo=UTC),
        dt.datetime(2027, 1, 31, 15, 0, tzinfo=UTC),
    )
    assert period_bounds("lifetime", now, "UTC") == (LIFETIME_START, None)


@pytest.mark.django_db
def test_create_update_delete_are_audited():
    w = make_world("acme")
    b = budget(w, "team", "25.50", period="weekly", name="Platform")
    assert (b.scope_id, b.node_id, b.limit_usd, b.thresholds, b.mode) == (
        w.tree.team.pk,
        w.tree.team.pk,
        D("25.50"),
        [50, 80, 100],
        "block",
    )
    services.budget_update(actor=SYSTEM, budget=b, limit_usd="30", thresholds=[90, 25])
    b.refresh_from_db()
    assert (b.limit_usd, b.thresholds) == (D("30"), [25, 90])
    services.budget_delete(actor=SYSTEM, budget=b)
    assert not Budget.objects.filter(pk=b.pk).exists()
    actions = list(
        AuditEvent.objects.filter(organization=w.org, action__startswith="budget.")
        .order_by("id")
        .values_list("action", "changes")
    )
    assert [a for a, _ in actions] == ["budget.create", "budget.update", "budget.delete"]
    assert actions[1][1] == {
        "limit_usd": ["25.500000000000", "30"],
        "thresholds": [[50, 80, 100], [25, 90]],
    }


@pytest.mark.django_db
def test_member_and_key_budgets_are_governed_by_their_nodes():
    w = make_world("acme")
    assert budget(w, "member", "1").node_id == w.tree.project.pk
    assert budget(w, "key", "1").node_id == w.tree.project.pk
    assert budget(w, "organization", "1").node_id == w.tree.root.pk


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        (
            {"scope": "galaxy"},
            {
                "scope": [
                    "Must be one of organization, department, team, project, member, key, tag."
                ]
            },
        ),
        ({"scope": "team", "scope_id": None}, {"scope_id": ["Required for this scope (an id)."]}),
        (
            {"scope": "team", "scope_id": 999999},
            {"scope_id": ["No team with this id in the organization."]},
        ),
        ({"limit_usd": "-0.01"}, {"limit_usd": ["Must be zero or more."]}),
        ({"limit_usd": 1.5}, {"limit_usd": ['Give the limit as a decimal string, e.g. "100.00".']}),
        ({"period": "hourly"}, {"period": ["Must be one of daily, weekly, monthly, lifetime."]}),
        ({"mode": "maybe"}, {"mode": ["Must be one of block, alert."]}),
        (
            {"thresholds": [0, 50]},
            {"thresholds": ["A list of up to 10 whole percentages from 1 to 1000."]},
        ),
        ({"webhook_url": "ftp://x"}, {"webhook_url": ["An http(s) URL."]}),
    ],
)
def test_bad_budgets_are_refused_and_change_nothing(fields, errors):
    w = make_world("acme")
    values = {
        "scope": "organization",
        "scope_id": None,
        "period": "monthly",
        "limit_usd": "10",
        **fields,
    }
    audit = AuditEvent.objects.count()
    with pytest.raises(InvalidInput) as err:
        services.budget_create(actor=SYSTEM, organization=w.org, **values)
    assert err.value.errors == errors
    assert Budget.objects.count() == 0
    assert AuditEvent.objects.count() == audit


@pytest.mark.django_db
def test_a_node_of_another_organization_is_an_unknown_scope():
    a = make_world("alpha")
    b = make_world("beta")
    with pytest.raises(InvalidInput) as err:
        services.budget_create(
            actor=SYSTEM,
            organization=a.org,
            scope="project",
            scope_id=b.tree.project.pk,
            period="daily",
            limit_usd="1",
        )
    assert err.value.errors == {"scope_id": ["No project with this id in the organization."]}
    with pytest.raises(InvalidInput):
        services.budget_create(
            actor=SYSTEM,
            organization=a.org,
            scope="key",
            scope_id=b.key_id,
            period="daily",
            limit_usd="1",
        )
    assert Budget.objects.count() == 0


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        _Hook.received.append((self.rfile.read(length), self.headers["X-MegaRouter-Signature"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_server():
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    server.shutdown()
    server.server_close()


def spend(b: Budget, amount: str, now: dt.datetime) -> None:
    start = period_bounds(b.period, now, b.organization.time_zone)[0]
    row, _ = BudgetUsage.objects.get_or_create(budget=b, period_start=start)
    BudgetUsage.objects.filter(pk=row.pk).update(spent=row.spent + D(amount))


@pytest.mark.django_db
def test_thresholds_notify_once_per_period_by_email_webhook_and_console(hook_server, settings):
    settings.BILLING_ALERT_WEBHOOK_SECRET = "alert-secret"
    url, received = hook_server
    w = make_world("acme")
    b = budget(w, "team", "10", period="daily", webhook_url=url, notify_emails=["fin@acme.test"])
    now = dt.datetime(2026, 6, 1, 12, tzinfo=UTC)
    spend(b, "4.99", now)
    assert budget_alerts_evaluate(now=now) == []
    spend(b, "3.01", now)  # 8.00: 50% and 80%
    alerts = budget_alerts_evaluate(now=now)
    assert sorted(a.threshold for a in alerts) == [50, 80]
    assert budget_alerts_evaluate(now=now) == []  # once per period
    assert len(mail.outbox) == 2
    assert mail.outbox[0].to == ["fin@acme.test"]
    assert len(received) == 2
    body, header = received[0]
    webhooks.verify(payload=body, header=header, secret="alert-secret", tolerance=60)
    payload = json.loads(body)
    assert (payload["budget_id"], payload["limit_usd"], payload["spent_usd"]) == (
        b.pk,
        "10.000000000000",
        "8.000000000000",
    )
    notes = list(Notification.objects.filter(organization=w.org).order_by("id"))
    assert [n.title for n in notes] == [
        "team budget reached 50% of its limit",
        "team budget reached 80% of its limit",
    ]
    assert set(BudgetAlert.objects.values_list("webhook_status", "email_sent")) == {
        ("http 204", True)
    }
    # next day: a new period, alerts again
    tomorrow = now + dt.timedelta(days=1)
    spend(b, "10", tomorrow)
    assert sorted(a.threshold for a in budget_alerts_evaluate(now=tomorrow)) == [50, 80, 100]


@pytest.mark.django_db
def test_alerts_go_to_owners_when_no_address_is_set():
    w = make_world("acme")
    w.tree.owner.email = "owner@acme.test"
    w.tree.owner.save()
    b = budget(w, "organization", "0", period="lifetime", thresholds=[100])
    spend(b, "0.000000000001", dt.datetime.now(UTC))
    assert budget_alerts_check() == 1
    assert mail.outbox[0].to == ["owner@acme.test"]


@pytest.mark.django_db
def test_period_roll_opens_the_current_period_rows():
    w = make_world("acme")
    b1 = budget(w, "team", "1", period="daily")
    b2 = budget(w, "key", "1", period="lifetime")
    assert budget_periods_roll() == 2
    assert budget_periods_roll() == 2  # idempotent
    assert BudgetUsage.objects.filter(budget=b1).count() == 1
    assert BudgetUsage.objects.get(budget=b2).period_start == LIFETIME_START
