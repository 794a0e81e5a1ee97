"""A budget changed through the management API applies to every gateway process's next
admission: the admitting backend here is a second instance (its own Redis connection and
state, as another process has), never the one the API's process uses."""

from __future__ import annotations

import io
import uuid
from decimal import Decimal

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from billing import services
from billing.admission import HoldRequest, UsageEventData
from billing.admission.db import DatabaseBackend
from billing.errors import BudgetExceeded
from billing.models import Budget, BudgetUsage, UsageRecord
from tests.billing.admission_helpers import run
from tests.billing.conftest import redis_backend
from tests.billing.factories import make_world

pytestmark = pytest.mark.django_db
D = Decimal


def other_process(backend):
    """A backend as another gateway process has it: a new instance, nothing shared in memory."""
    return redis_backend(backend.prefix) if backend.name == "redis" else DatabaseBackend()


def admit(backend, world, amount: str):
    async def go():
        res = await backend.reserve(uuid.uuid4().hex, world.ctx(), HoldRequest.fixed(D(amount), 10))
        if "persist" in res.extra:
            await res.extra["persist"]
        await backend.settle(res, D(amount), UsageEventData(model="m", tokens_in=1))
        return res

    return run(go)


@pytest.fixture
def owner_api(django_capture_on_commit_callbacks):
    def call(world, method, path, body=None):
        client = APIClient()
        client.force_login(world.tree.owner)
        with django_capture_on_commit_callbacks(execute=True):
            return getattr(client, method)(
                f"/api/orgs/{world.org.slug}/{path}", body, format="json"
            )

    return call


@pytest.mark.parametrize("scope", ["organization", "project", "member", "key"])
def test_create_raise_lower_pause_and_delete_apply_at_the_next_admission(backend, owner_api, scope):
    w = make_world(f"defs-{scope}", balance="10")
    gateway = other_process(backend)
    admit(gateway, w, "0.001")  # warm: anything it would cache is cached now
    scope_id = {
        "organization": None,
        "project": w.tree.project.pk,
        "member": w.member_id,
        "key": w.key_id,
    }[scope]
    body = {"scope": scope, "period": "daily", "limit_usd": "0.003"}
    if scope_id is not None:
        body["scope_id"] = scope_id
    r = owner_api(w, "post", "budgets/", body)
    assert r.status_code == 201, r.content
    bid = r.json()["id"]

    admit(gateway, w, "0.002")
    with pytest.raises(BudgetExceeded) as refused:
        admit(gateway, w, "0.002")  # 0.002 spent of 0.003: no room for another
    assert (refused.value.budget_id, refused.value.layer) == (bid, scope)

    assert owner_api(w, "patch", f"budgets/{bid}/", {"limit_usd": "0.004"}).status_code == 200
    admit(gateway, w, "0.002")  # raised: exactly fits
    assert owner_api(w, "patch", f"budgets/{bid}/", {"limit_usd": "0.001"}).status_code == 200
    with pytest.raises(BudgetExceeded):
        admit(gateway, w, "0.000001")  # lowered below what was spent
    assert owner_api(w, "patch", f"budgets/{bid}/", {"mode": "alert"}).status_code == 200
    admit(gateway, w, "0.001")  # paused (alert only): counts, never blocks
    assert owner_api(w, "patch", f"budgets/{bid}/", {"mode": "block"}).status_code == 200
    with pytest.raises(BudgetExceeded):
        admit(gateway, w, "0.000001")
    services.usage_events_post()
    # Its spend is the usage admitted since it was created (not the warm-up request's).
    assert BudgetUsage.objects.get(budget_id=bid).spent == D("0.005")
    call_command("billing_check", stdout=io.StringIO())

    assert owner_api(w, "delete", f"budgets/{bid}/").status_code == 204
    admit(gateway, w, "0.5")  # a deleted budget refuses nothing


def test_a_budgets_spend_is_the_usage_since_it_was_created_and_billing_check_says_so(
    backend, owner_api
):
    w = make_world("defs-check", balance="10")
    gateway = other_process(backend)
    admit(gateway, w, "0.25")  # before the budget: not its spend
    r = owner_api(
        w,
        "post",
        "budgets/",
        {"scope": "key", "scope_id": w.key_id, "period": "monthly", "limit_usd": "1"},
    )
    bid = r.json()["id"]
    for _ in range(3):
        admit(gateway, w, "0.1")
    services.usage_events_post()
    assert BudgetUsage.objects.get(budget_id=bid).spent == D("0.3")
    out = io.StringIO()
    call_command("billing_check", stdout=out)
    assert "books balance" in out.getvalue()

    # A record in the budget's scope, admitted after it applied, that skipped it: reported.
    late = UsageRecord.objects.filter(organization=w.org).latest("created_at")
    UsageRecord.objects.filter(pk=late.pk).update(budget_periods=[])
    with pytest.raises(Exception, match=f"budget {bid}: 1 requests in its scope"):
        call_command("billing_check", stdout=io.StringIO())


def test_a_push_that_failed_after_commit_is_repeated_by_reconciliation(
    rbackend, owner_api, monkeypatch
):
    w = make_world("defs-lost", balance="10")
    gateway = other_process(rbackend)
    admit(gateway, w, "0.001")
    real = type(rbackend).budgets_changed

    def unreachable(self, organization_id):
        raise ConnectionError("redis went away")

    monkeypatch.setattr(type(rbackend), "budgets_changed", unreachable)
    r = owner_api(
        w, "post", "budgets/", {"scope": "organization", "period": "daily", "limit_usd": "0.0001"}
    )
    assert r.status_code == 201  # committed: the failure is logged, not the caller's
    assert Budget.objects.get(pk=r.json()["id"]).enforced_at is None  # not applied yet
    monkeypatch.setattr(type(rbackend), "budgets_changed", real)
    out = services.reservations_reconcile()
    assert out["budget_definitions_pushed"] == 1
    with pytest.raises(BudgetExceeded):
        admit(gateway, w, "0.001")
    assert Budget.objects.get(pk=r.json()["id"]).enforced_at is not None
    assert "budget_definitions_pushed" not in services.reservations_reconcile()
