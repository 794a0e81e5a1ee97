"""The routing service as the gateway calls it (routing.engine.route_call): a key, the call's
route request and the request's policy in, the decision out, with prices and the deployments
the gateway builds its endpoints from; NoRoute mapped to the gateway's errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from gateway.errors import NotFound, PermissionDenied, route_error
from gateway.pipeline import _route_request, prepare
from gateway.providers.endpoints import endpoint_for
from gateway.providers.types import ChatRequest, Message
from orgs.keys import key_context_for_sync
from orgs.models import Role
from routing.catalog import catalog_snapshot
from routing.engine import NoRoute, route_call
from routing.policies import PolicySpec, policy_table, policy_table_reset, routing_policy_set
from tests.orgs.factories import SYSTEM, add_member, make_key, make_tree
from tests.routing.engine_catalog import build_catalog

pytestmark = pytest.mark.django_db(transaction=True)


def _setup():
    build_catalog()
    tree = make_tree("acme")
    routing_policy_set(actor=SYSTEM, node=tree.team, data={"reference_model": "alpha/a-large"})
    member = add_member(tree.project, Role.DEVELOPER)
    created = make_key(
        tree.project,
        member,
        allowed_models=["alpha/*", "beta/b-mid"],
        routing_policy={"strategy": "cost"},
    )
    key = key_context_for_sync(created.raw_key)
    from billing import services as billing

    billing.transfer_record(actor=SYSTEM, organization=tree.org, amount="10", reference="t-1")
    catalog_snapshot(max_age=0)
    policy_table(max_age=0)
    return key


def _close():
    from django.db import connection

    connection.close()


@pytest.fixture
async def key():
    policy_table_reset()
    try:
        yield await sync_to_async(_setup)()
    finally:
        await sync_to_async(_close)()


def _ctx(key, model="auto", override=None):
    from gateway.pipeline import CallContext

    return CallContext(
        request_id="req-1", route="chat", key=key, requested_model=model, override=override
    )


# the bundled estimator puts it at tier 2 (tests/routing/test_engine.py's EASY)
REQUEST = ChatRequest(
    messages=[Message(role="user", content="What is the derivative of x^3 sin x?")]
)


async def route(key, model="auto", override=None):
    ctx = _ctx(key, model, override)
    return await route_call(key=key, request=_route_request(ctx, REQUEST), override=override)


async def test_auto_routes_with_the_key_and_team_policies(key):
    decision = await route(key)
    assert decision.strategy == "cost"
    # the key allows alpha/* and beta/b-mid: b-large is out
    deployments = [c.deployment for c in decision.candidates]
    assert deployments == ["b-mid-eu", "a-mid-us", "a-mid-eu", "a-large-us"]
    first = decision.candidates[0]
    assert (first.model_id, first.provider) == ("beta/b-mid", "beta")
    endpoint = endpoint_for(decision.snapshot, first.info)
    assert endpoint.model == "b-mid"
    assert endpoint.deployment_id == first.deployment_id
    assert first.input_per_token == Decimal("0.0000008")
    assert first.output_per_token == Decimal("0.0000016")
    assert decision.explain["reference_model"] == "alpha/a-large"
    assert decision.explain["policy"]["levels"] == ["team", "key"]


async def test_request_override_narrows_to_a_region(key):
    decision = await route(key, override=PolicySpec(allowed_regions=("eu-west-1",)))
    assert [c.deployment for c in decision.candidates] == ["b-mid-eu", "a-mid-eu", "a-small-eu"]


async def test_named_model_and_errors(key):
    decision = await route(key, model="a-mid")
    assert decision.strategy == "fixed"
    assert [c.deployment for c in decision.candidates] == ["a-mid-us", "a-mid-eu"]
    with pytest.raises(NoRoute) as unknown:
        await route(key, model="nope")
    assert isinstance(route_error(unknown.value), NotFound)
    with pytest.raises(NoRoute) as refused:
        await route(key, model="beta/b-large")
    assert isinstance(route_error(refused.value), PermissionDenied)
    assert refused.value.message == "This API key may not use the model 'beta/b-large'."


async def test_prepare_routes_and_holds_in_one_call(key):
    ctx = _ctx(key)
    await prepare(ctx, REQUEST)
    assert ctx.plan is not None and ctx.plan.candidates[0].deployment == "b-mid-eu"
    assert ctx.admission is not None and ctx.admission.amount > 0
    from billing.admission.service import admission_release

    await admission_release(ctx.admission)
