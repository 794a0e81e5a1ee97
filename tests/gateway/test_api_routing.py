"""The routing engine in the pipeline, through the real server: policies (key level, then the
per-request override), the decision explanation in the debug header and the usage record,
and breaker-aware failover (an open breaker is skipped without a call)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from billing.models import UsageRecord
from billing.tasks import usage_events_process
from tests.gateway.test_api_billing import Tenant, World, chat

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(gateway_server: Any, simulator_url: str) -> World:
    return World(simulator_url)


def test_debug_header_explains_the_decision_and_the_usage_record_keeps_it(gateway_server, world):
    tenant = Tenant(routing_policy={"strategy": "cost"})
    # a prompt the complexity estimator puts at tier 2, so every model's tier qualifies
    easy = [{"role": "user", "content": "Please list the days of the week."}]
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
        plain = http.post("/v1/chat/completions", json=chat("auto", messages=easy))
        debug = http.post(
            "/v1/chat/completions",
            json=chat("auto", messages=easy),
            headers={"x-megarouter-debug": "1"},
        )
        override = http.post(
            "/v1/chat/completions",
            json=chat("auto", megarouter={"strategy": "latency"}),
            headers={"x-megarouter-debug": "1"},
        )
    assert plain.status_code == debug.status_code == override.status_code == 200
    assert "x-megarouter-route" not in plain.headers
    # The key's policy sets the strategy; the request's megarouter object overrides it.
    assert plain.headers["x-megarouter-strategy"] == "cost"
    assert override.headers["x-megarouter-strategy"] == "latency"
    explain = orjson.loads(debug.headers["x-megarouter-route"])
    assert explain["strategy"] == "cost"
    assert explain["candidates"][0]["model"] == debug.headers["x-megarouter-model"]
    assert {"reason", "considered", "rejected", "policy"} <= explain.keys()
    assert orjson.loads(override.headers["x-megarouter-route"])["strategy"] == "latency"
    # The cheapest eligible model answers a cost-first auto request.
    assert debug.headers["x-megarouter-model"] == "openai/gpt-exact"
    usage_events_process()
    record = UsageRecord.objects.get(request_id=debug.headers["x-megarouter-usage-id"])
    assert record.routing["explain"] == explain
    assert record.strategy == "cost"
    assert record.requested_model == "auto"


def test_an_open_breaker_takes_the_deployment_out_of_the_way(gateway_server, world):
    """sim-flaky-a answers 500 every time: after ROUTING_BREAKER_FAILURES (5) failures its
    breaker opens, the engine orders it behind the healthy deployment, and calls go straight
    to sim-flaky-b with no failed attempt."""
    tenant = Tenant()
    ids = []
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
        for _ in range(8):
            response = http.post("/v1/chat/completions", json=chat("openai/gpt-flaky"))
            assert response.status_code == 200
            ids.append(response.headers["x-megarouter-usage-id"])
    usage_events_process()
    records = [UsageRecord.objects.get(request_id=i) for i in ids]
    outcomes = [[a["error"] for a in r.routing["attempts"]] for r in records]
    assert outcomes[:5] == [["server_error", None]] * 5
    assert outcomes[-1] == [None]
    last = records[-1]
    assert (last.deployment, last.attempts, last.fallback_used) == ("sim-flaky-b", 1, False)
    assert last.routing["explain"]["candidates"][0]["deployment"] == "sim-flaky-b"


def test_a_deployments_rpm_limit_moves_traffic_then_answers_429_with_retry_after(
    gateway_server, world
):
    """gpt-sim gets a second deployment; both are limited to 2 requests a minute. Four
    requests are served (two on each, the explanation says how each was picked), the fifth is
    refused before any call with the upstream_rate_limited error and a Retry-After, and
    nothing is charged for it."""
    from routing.models import Deployment
    from routing.services import catalog_version_bump
    from tests.gateway.conftest import reset_caches

    first = Deployment.objects.get(name="sim-gpt")
    Deployment.objects.create(
        name="sim-gpt-2",
        model=first.model,
        provider=first.provider,
        base_url=first.base_url,
        provider_model_name=first.provider_model_name,
        credential=first.credential,
        weight=1,
    )
    Deployment.objects.filter(model=first.model).update(rpm_limit=2)
    catalog_version_bump()
    reset_caches()
    tenant = Tenant()
    debug = {"x-megarouter-debug": "1"}
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
        replies = [
            http.post("/v1/chat/completions", json=chat("openai/gpt-sim"), headers=debug)
            for _ in range(5)
        ]
    assert [r.status_code for r in replies] == [200, 200, 200, 200, 429]
    why = orjson.loads(replies[0].headers["x-megarouter-route"])["deployment"]["why"]
    assert why == "weighted random: weight 1 of 2 among 2"
    refused = replies[4]
    assert refused.json()["error"]["code"] == "upstream_rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "x-megarouter-cost-usd" not in refused.headers
    usage_events_process()
    records = UsageRecord.objects.filter(organization_id=tenant.org.pk)
    assert sorted(r.deployment for r in records) == ["sim-gpt", "sim-gpt", "sim-gpt-2", "sim-gpt-2"]
