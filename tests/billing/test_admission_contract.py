"""The admission contract, run against both backends (database and Redis)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services
from billing.admission import HoldRequest, UsageEventData
from billing.admission.base import settle_rows
from billing.errors import BalanceExhausted, BudgetExceeded, RateLimited
from billing.models import (
    BillingAccount,
    BudgetUsage,
    LedgerEntry,
    Reservation,
    UsageEvent,
    UsageRecord,
)
from tests.billing.admission_helpers import observed, open_reservations, run
from tests.billing.factories import budget, make_world

pytestmark = pytest.mark.django_db
D = Decimal


def rid() -> str:
    return uuid.uuid4().hex


def usage(**kw) -> UsageEventData:
    values = {
        "requested_model": "auto",
        "model": "openai/gpt-4o-mini",
        "provider": "openai",
        "deployment": "openai-gpt-4o-mini",
        "strategy": "balanced",
        "tokens_in": 1200,
        "tokens_out": 300,
        "tokens_cached": 200,
        "price_version_id": 7,
        "latency_ms": 420,
        "ttft_ms": 95,
        "status": "ok",
        "attempts": 2,
        "fallback_used": True,
        "routing": {"chosen": "openai-gpt-4o-mini", "candidates": 3},
    }
    values.update(kw)
    return UsageEventData(**values)


@pytest.fixture
def world():
    return make_world("acme", balance="100.00")


def test_reserve_then_settle_charges_the_actual_cost_everywhere(backend, world):
    org_b = budget(world, "organization", "10")
    team_b = budget(world, "team", "5")
    key_b = budget(world, "key", "1")
    budgets = [org_b, team_b, key_b]
    request_id = rid()

    async def scenario():
        res = await backend.reserve(request_id, world.ctx(), HoldRequest.fixed(D("0.5"), 1500))
        if "persist" in res.extra:
            await res.extra["persist"]  # the durable copy, written while the provider answers
        return res

    res = run(scenario)
    assert res.amount == D("0.5")
    assert open_reservations(world.org) == 1
    assert [b[0] for b in res.budgets] == [org_b.pk, team_b.pk, key_b.pk]
    during = observed(backend, world.org, budgets)
    assert during == {
        "available": D("99.5"),
        org_b.pk: D("0.5"),
        team_b.pk: D("0.5"),
        key_b.pk: D("0.5"),
    }

    run(backend.settle, res, D("0.2"), usage())
    after = observed(backend, world.org, budgets)
    assert after == {
        "available": D("99.8"),
        org_b.pk: D("0.2"),
        team_b.pk: D("0.2"),
        key_b.pk: D("0.2"),
    }
    assert open_reservations(world.org) == 0
    event = UsageEvent.objects.get(request_id=request_id)
    assert event.cost == D("0.2")
    assert event.backend == backend.name

    posted = services.usage_events_post()
    assert posted.events == 1
    assert posted.budget_ids == {org_b.pk, team_b.pk, key_b.pk}
    assert UsageEvent.objects.count() == 0
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.cost, record.tokens_in, record.tokens_out, record.tokens_cached) == (
        D("0.2"),
        1200,
        300,
        200,
    )
    assert (record.key_id, record.member_id, record.project_id, record.team_id) == (
        world.key_id,
        world.member_id,
        world.tree.project.pk,
        world.tree.team.pk,
    )
    assert (record.price_version_id, record.attempts, record.fallback_used) == (7, 2, True)
    assert record.routing == {"chosen": "openai-gpt-4o-mini", "candidates": 3}
    charge = LedgerEntry.objects.get(organization=world.org, kind="usage")
    assert charge.amount == D("-0.2")
    assert record.ledger_entry_id == charge.pk
    assert BillingAccount.objects.get(organization=world.org).balance == D("99.8")
    assert services.account_check() == []
    spent = dict(BudgetUsage.objects.filter(budget__in=budgets).values_list("budget_id", "spent"))
    assert spent == {org_b.pk: D("0.2"), team_b.pk: D("0.2"), key_b.pk: D("0.2")}
    # posting moves nothing the admission counters see
    assert observed(backend, world.org, budgets) == after
    # posting twice is a no-op
    assert services.usage_events_post().events == 0
    assert LedgerEntry.objects.filter(kind="usage").count() == 1


@pytest.mark.parametrize(
    "layer", ["organization", "department", "team", "project", "member", "key"]
)
def test_each_layer_refuses_and_names_itself_changing_nothing(backend, world, layer):
    others = [budget(world, s, "50") for s in ("organization", "team", "key") if s != layer]
    tight = budget(world, layer, "0.30")
    budgets = [*others, tight]
    first = run(backend.reserve, rid(), world.ctx(), HoldRequest.fixed(D("0.25"), 10))
    before = observed(backend, world.org, budgets)
    rows = open_reservations(world.org)
    with pytest.raises(BudgetExceeded) as err:
        run(backend.reserve, rid(), world.ctx(), HoldRequest.fixed(D("0.06"), 10))
    assert (err.value.layer, err.value.budget_id, err.value.code) == (
        layer,
        tight.pk,
        "budget_exceeded",
    )
    assert err.value.http_status == 429
    assert err.value.scope_id == tight.scope_id
    assert observed(backend, world.org, budgets) == before
    assert open_reservations(world.org) == rows
    # an exact fit is admitted (no false refusal)
    run(backend.reserve, rid(), world.ctx(), HoldRequest.fixed(D("0.05"), 10))
    assert observed(backend, world.org, [tight])[tight.pk] == D("0.30")
    run(backend.release, first)


def test_balance_refuses_with_402_changing_nothing(backend):
    w = make_world("poor", balance="1.00")
    b = budget(w, "organization", "100")
    run(backend.reserve, rid(), w.ctx(), HoldRequest.fixed(D("0.75"), 10))
    before = observed(backend, w.org, [b])
    with pytest.raises(BalanceExhausted) as err:
        run(backend.reserve, rid(), w.ctx(), HoldRequest.fixed(D("0.26"), 10))
    assert (err.value.http_status, err.value.code) == (402, "insufficient_balance")
    assert observed(backend, w.org, [b]) == before
    run(backend.reserve, rid(), w.ctx(), HoldRequest.fixed(D("0.25"), 10))


def test_no_balance_at_all_is_refused(backend):
    w = make_world("empty", balance=None)
    with pytest.raises(BalanceExhausted):
        run(backend.reserve, rid(), w.ctx(), HoldRequest.fixed(D("0.000001"), 1))


def test_alert_only_budget_counts_but_never_blocks(backend, world):
    soft = budget(world, "project", "0.10", mode="alert")
    run(backend.reserve, rid(), world.ctx(), HoldRequest.fixed(D("0.25"), 10))
    assert observed(backend, world.org, [soft])[soft.pk] == D("0.25")


def test_release_returns_everything(backend, world):
    b = budget(world, "key", "1")
    before = observed(backend, world.org, [b])
    res = run(backend.reserve, rid(), world.ctx(), HoldRequest.fixed(D("0.4"), 10))
    run(backend.release, res)
    assert observed(backend, world.org, [b]) == before
    assert open_reservations(world.org) == 0
    assert UsageEvent.objects.count() == 0
    with pytest.raises(RuntimeError):
        run(backend.release, res)


def test_rate_limits_per_key(backend, world):
    ctx = world.ctx(rpm_limit=3, tpm_limit=1000)
    for _ in range(3):
        run(backend.reserve, rid(), ctx, HoldRequest.fixed(D("0.001"), 100))
    with pytest.raises(RateLimited) as err:
        run(backend.reserve, rid(), ctx, HoldRequest.fixed(D("0.001"), 100))
    assert (err.value.limit, err.value.http_status, err.value.code) == (
        "requests",
        429,
        "rate_limited",
    )
    assert 1 <= err.value.retry_after <= 60
    # tokens: another key's window is separate
    tctx = world.ctx(key_id=world.key_id + 1000, rpm_limit=None, tpm_limit=1000)
    run(backend.reserve, rid(), tctx, HoldRequest.fixed(D("0.001"), 900))
    with pytest.raises(RateLimited) as err:
        run(backend.reserve, rid(), tctx, HoldRequest.fixed(D("0.001"), 101))
    assert err.value.limit == "tokens"
    run(backend.reserve, rid(), tctx, HoldRequest.fixed(D("0.001"), 100))


def test_abandoned_reservation_is_released_by_reconciliation(backend, world):
    b = budget(world, "key", "1")
    before = observed(backend, world.org, [b])

    async def crash():
        res = await backend.reserve(rid(), world.ctx(), HoldRequest.fixed(D("0.4"), 10))
        if "persist" in res.extra:
            await res.extra["persist"]
        return res  # the process "dies": never settles

    res = run(crash)
    assert open_reservations(world.org) == 1
    assert observed(backend, world.org, [b])[b.pk] == D("0.4")
    # not yet past the deadline: nothing happens
    assert services.reservations_reconcile() == {"released": 0, "settled": 0}
    later = res.deadline + dt.timedelta(seconds=120)
    assert services.reservations_reconcile(now=later) == {"released": 1, "settled": 0}
    assert observed(backend, world.org, [b]) == before
    assert open_reservations(world.org) == 0
    # a late settle from a process that was only slow still charges the actual cost
    run(backend.settle, res, D("0.1"), usage())
    assert observed(backend, world.org, [b])[b.pk] == D("0.1")
    assert observed(backend, world.org, [b])["available"] == D("99.9")


def test_reconciliation_settles_when_the_usage_event_was_written(backend, world):
    """The process died after writing the usage event but before the counters moved."""
    b = budget(world, "key", "1")

    async def crash_mid_settle():
        res = await backend.reserve(rid(), world.ctx(), HoldRequest.fixed(D("0.4"), 10))
        if "persist" in res.extra:
            await res.extra["persist"]
        return res

    res = run(crash_mid_settle)
    settle_rows(res, D("0.15"), usage(), db_held=backend.name == "db")
    if backend.name == "db":
        # the database backend moves the counters in the same transaction: nothing is left
        assert services.reservations_reconcile(now=res.deadline + dt.timedelta(seconds=120)) == {
            "released": 0,
            "settled": 0,
        }
        return
    later = res.deadline + dt.timedelta(seconds=120)
    assert services.reservations_reconcile(now=later) == {"released": 0, "settled": 1}
    assert observed(backend, world.org, [b])[b.pk] == D("0.15")
    assert observed(backend, world.org, [b])["available"] == D("99.85")


def test_concurrent_reservations_never_exceed_the_limit(backend):
    """200 concurrent requests at $0.0001 against a $0.01 budget: exactly 100 admitted."""
    w = make_world("burst", balance="50")
    b = budget(w, "key", "0.01")
    cost = D("0.0001")

    async def one():
        try:
            res = await backend.reserve(rid(), w.ctx(), HoldRequest.fixed(cost, 10))
        except BudgetExceeded:
            return None
        await backend.settle(res, cost, usage(tokens_in=5, tokens_out=5))
        return res

    async def burst():
        return await asyncio.gather(*(one() for _ in range(200)))

    results = run(burst)
    admitted = [r for r in results if r is not None]
    assert len(admitted) == 100
    services.usage_events_post()
    total = -sum(LedgerEntry.objects.filter(kind="usage").values_list("amount", flat=True))
    assert total == D("0.01")
    assert UsageRecord.objects.count() == 100
    assert BudgetUsage.objects.get(budget=b).spent == D("0.01")


def test_posting_is_idempotent_by_request_id(backend, world):
    res = run(backend.reserve, "req-dup", world.ctx(), HoldRequest.fixed(D("0.1"), 10))
    run(backend.settle, res, D("0.1"), usage())
    services.usage_events_post()
    # a duplicate event for an already recorded request is consumed without a second charge
    UsageEvent.objects.create(
        request_id="req-dup",
        organization_id=world.org.pk,
        backend=backend.name,
        cost=D("0.1"),
        budget_periods=[],
        data={},
        created_at=timezone.now(),
    )
    assert services.usage_events_post().events == 1
    assert LedgerEntry.objects.filter(kind="usage").count() == 1
    assert UsageRecord.objects.filter(request_id="req-dup").count() == 1
    assert Reservation.objects.count() == 0


def test_posting_locks_budget_rows_before_accounts(backend):
    """Posting takes its row locks in the order every reserve and settle does (budget usage
    rows by budget id, then accounts): the other order deadlocked against a concurrent reserve
    on PostgreSQL (found by bench/budget_exactness.py --admission db)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    worlds = [make_world(f"order{i}", balance="10") for i in range(2)]
    for w in worlds:
        budget(w, "organization", "5")
        budget(w, "key", "5")
        res = run(backend.reserve, rid(), w.ctx(), HoldRequest.fixed(D("0.1"), 10))
        run(backend.settle, res, D("0.05"), usage())
    with CaptureQueriesContext(connection) as queries:
        assert services.usage_events_post().events == 2
    writes = [
        q["sql"].split('"')[1]
        for q in queries.captured_queries
        if q["sql"].startswith("UPDATE") or "FOR UPDATE" in q["sql"]
    ]
    budget_rows = [i for i, table in enumerate(writes) if table == "billing_budgetusage"]
    accounts = [i for i, table in enumerate(writes) if table == "billing_billingaccount"]
    assert budget_rows and accounts
    assert max(budget_rows) < min(accounts), writes


def test_the_record_keeps_the_prompt_cache_given_up_by_switching(backend, world):
    lost = {"explain": {"prompt_cache": {"kept": False, "cache_lost_usd": "0.00180000"}}}
    kept = {"explain": {"prompt_cache": {"kept": True, "cache_lost_usd": "0.00000000"}}}
    for request_id, routing in (("req-lost", lost), ("req-kept", kept), ("req-none", {})):
        res = run(backend.reserve, request_id, world.ctx(), HoldRequest.fixed(D("0.1"), 10))
        run(backend.settle, res, D("0.01"), usage(routing=routing))
    services.usage_events_post()
    by_id = dict(UsageRecord.objects.values_list("request_id", "cache_lost"))
    assert by_id == {"req-lost": D("0.0018"), "req-kept": D(0), "req-none": D(0)}


def test_a_tag_budget_counts_only_the_requests_that_carry_its_tag(backend, world):
    """A budget on the request tag feature=search: a request with the tag is held and charged
    against it, one without it (or with another value) is not; at its limit, a tagged request
    is refused naming the tag layer while untagged ones go on."""
    tagged = budget(world, "tag", "1", tag="feature=search")
    search = world.ctx(tags=("env=prod", "feature=search"))
    other = world.ctx(tags=("feature=chat",))

    async def scenario():
        first = await backend.reserve(rid(), search, HoldRequest.fixed(D("0.6"), 10))
        untagged = await backend.reserve(rid(), other, HoldRequest.fixed(D("0.6"), 10))
        refused = None
        try:
            await backend.reserve(rid(), search, HoldRequest.fixed(D("0.6"), 10))
        except BudgetExceeded as exc:
            refused = exc
        plain = await backend.reserve(rid(), world.ctx(), HoldRequest.fixed(D("0.6"), 10))
        return first, untagged, refused, plain

    first, untagged, refused, plain = run(scenario)
    assert [b[0] for b in first.budgets] == [tagged.pk]
    assert untagged.budgets == () and plain.budgets == ()
    assert refused is not None
    assert (refused.layer, refused.budget_id) == ("tag", tagged.pk)
