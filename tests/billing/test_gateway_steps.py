"""The admit / settle steps the gateway installs, driven with stand-ins shaped like the
gateway's CallContext / RoutePlan / Candidate (the gateway is another branch): the cost the
gateway reports equals the usage record and the ledger charge."""

from __future__ import annotations

import time
from decimal import Decimal
from types import SimpleNamespace

import pytest

from billing import gateway_steps, services
from billing.errors import BudgetExceeded
from billing.models import LedgerEntry, UsageRecord
from gateway.providers.types import Usage
from orgs.keys import key_context_for_sync
from routing.catalog import catalog_snapshot_reset
from tests.billing.admission_helpers import observed, run
from tests.billing.factories import budget, make_world
from tests.routing.factories import ModelFactory

pytestmark = pytest.mark.django_db
D = Decimal


def candidate(model, deployment):
    price = model.prices.get()
    return SimpleNamespace(
        model_id=model.canonical_id,
        provider=model.provider.slug,
        deployment=deployment,
        input_per_token=price.input_per_token,
        output_per_token=price.output_per_token,
        cached_input_per_token=price.cached_input_per_token,
        cache_write_per_token=price.cache_write_per_token,
    )


def call(world, plan, request_id, max_tokens=100):
    return SimpleNamespace(
        request_id=request_id,
        key=key_context_for_sync(world.raw_key),
        requested_model="auto",
        max_tokens=max_tokens,
        input_tokens_estimate=1000,
        started=time.perf_counter(),
        plan=plan,
        admission=None,
        chosen=None,
        attempts=[],
        ttft_seconds=0.05,
        usage=None,
        finished=True,
        cost=D(0),
        generated_tokens=lambda: 0,
    )


def test_admit_reserves_worst_case_and_settle_charges_what_the_gateway_reports(backend):
    catalog_snapshot_reset()
    w = make_world("acme", balance="10")
    b = budget(w, "key", "1")
    cheap = ModelFactory(price=(D("0.000001"), D("0.000002")))
    dear = ModelFactory(price=(D("0.000003"), D("0.000015")))
    plan = SimpleNamespace(
        strategy="balanced", candidates=[candidate(cheap, "cheap-1"), candidate(dear, "dear-1")]
    )
    costs = []
    for i in range(3):
        ctx = call(w, plan, f"req-{i}")

        async def flow(ctx=ctx, i=i):
            ctx.admission = await gateway_steps.admit(ctx=ctx, plan=plan)
            assert ctx.admission.amount == D("0.0045")  # 1000 * 3e-6 + 100 * 1.5e-5
            ctx.chosen = plan.candidates[0]
            ctx.attempts = [
                SimpleNamespace(deployment="dear-1", error="timeout", status=None),
                SimpleNamespace(deployment="cheap-1", error=None, status=200),
            ]
            ctx.usage = Usage(prompt_tokens=900 + i, completion_tokens=50, cached_tokens=100)
            await gateway_steps.settle(ctx=ctx)

        run(flow)
        costs.append(ctx.cost)
    # 900 + i prompt tokens at $1/M (no cached price: input price) + 50 output at $2/M
    assert costs == [D("0.001"), D("0.001001"), D("0.001002")]
    assert observed(backend, w.org, [b])[b.pk] == sum(costs)
    services.usage_events_post()
    records = list(UsageRecord.objects.order_by("request_id"))
    assert [r.cost for r in records] == costs
    assert records[0].price_version_id == cheap.prices.get().pk
    assert (records[0].fallback_used, records[0].attempts, records[0].deployment) == (
        True,
        2,
        "cheap-1",
    )
    assert records[0].routing["attempts"][0] == {
        "deployment": "dear-1",
        "error": "timeout",
        "status": None,
    }
    charged = -sum(LedgerEntry.objects.filter(kind="usage").values_list("amount", flat=True))
    assert charged == sum(costs) == sum(r.cost for r in records)


def test_nothing_answered_releases_and_refusals_name_the_layer(backend):
    w = make_world("acme", balance="10")
    b = budget(w, "team", "0.005")
    model = ModelFactory(price=(D("0.000003"), D("0.000015")))
    plan = SimpleNamespace(strategy="cost", candidates=[candidate(model, "d")])
    ctx = call(w, plan, "req-a")

    async def failed_everywhere():
        ctx.admission = await gateway_steps.admit(ctx=ctx, plan=plan)
        await gateway_steps.settle(ctx=ctx)  # ctx.chosen is None: every deployment failed

    run(failed_everywhere)
    assert observed(backend, w.org, [b])[b.pk] == D(0)
    big = call(w, plan, "req-b", max_tokens=1000)
    with pytest.raises(BudgetExceeded) as err:
        run(gateway_steps.admit, ctx=big, plan=plan)
    assert (err.value.layer, err.value.scope_id, err.value.http_status) == (
        "team",
        w.tree.team.pk,
        429,
    )
