"""The engine as the gateway's route step (gateway/engine_route.py): a call context and a
ChatRequest in, the gateway's RoutePlan out, with endpoints and prices; NoRoute mapped to the
gateway's errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from gateway.engine_route import route_engine, route_engine_explained
from gateway.errors import NotFound, PermissionDenied
from gateway.pipeline import CallContext
from gateway.providers.types import ChatRequest, Message
from gateway.wire.common import RoutingOverride
from orgs.keys import key_context_for_sync
from orgs.models import Role
from routing.catalog import catalog_snapshot
from routing.policies import policy_table, policy_table_reset, routing_policy_set
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
    return CallContext(
        request_id="req-1", route="chat", key=key, requested_model=model, override=override
    )


REQUEST = ChatRequest(messages=[Message(role="user", content="Please list the days of the week.")])


async def test_auto_routes_with_the_key_and_team_policies(key):
    plan, decision = await route_engine_explained(ctx=_ctx(key), request=REQUEST)
    assert plan.strategy == "cost"
    # the key allows alpha/* and beta/b-mid: b-large is out
    deployments = [c.deployment for c in plan.candidates]
    assert deployments == ["b-mid-eu", "a-mid-us", "a-mid-eu", "a-large-us"]
    first = plan.candidates[0]
    assert (first.model_id, first.provider) == ("beta/b-mid", "beta")
    assert first.endpoint.model == "b-mid"
    assert first.endpoint.deployment_id == decision.candidates[0].deployment_id
    assert first.input_per_token == Decimal("0.0000008")
    assert first.output_per_token == Decimal("0.0000016")
    assert decision.explain["reference_model"] == "alpha/a-large"
    assert decision.explain["policy"]["levels"] == ["team", "key"]


async def test_request_override_narrows_to_a_region(key):
    plan = await route_engine(
        ctx=_ctx(key, override=RoutingOverride(region="eu-west-1")), request=REQUEST
    )
    assert [c.deployment for c in plan.candidates] == ["b-mid-eu", "a-mid-eu", "a-small-eu"]


async def test_named_model_and_errors(key):
    plan = await route_engine(ctx=_ctx(key, model="a-mid"), request=REQUEST)
    assert plan.strategy == "fixed"
    assert [c.deployment for c in plan.candidates] == ["a-mid-us", "a-mid-eu"]
    with pytest.raises(NotFound):
        await route_engine(ctx=_ctx(key, model="nope"), request=REQUEST)
    with pytest.raises(PermissionDenied):
        await route_engine(ctx=_ctx(key, model="beta/b-large"), request=REQUEST)
