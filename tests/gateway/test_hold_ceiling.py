"""The hold is the ceiling of the charge, through the real server and the simulator: a request
without max_tokens is sent the output limit admission could pay for and ends with
finish_reason "length"; a provider that ignores the limit is cut at it (streams) and never
charged past it; a prompt whose provider count is far above characters / 4 is held at its
upper bound, so a budget it does not fit refuses it instead of being overrun."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from billing.models import BudgetUsage, Reservation, UsageRecord
from billing.tasks import usage_events_process
from tests.gateway import factories as f
from tests.gateway.conftest import reset_caches
from tests.gateway.test_api_billing import EXACT_OUT, Tenant, World

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal


@pytest.fixture
def world(gateway_server: Any, simulator_url: str) -> World:
    w = World(simulator_url)
    openai = w.models["gpt"].provider
    anthropic = w.models["claude"].provider
    credential = f.credential_create()
    # Input free, output $1 per million: a request's cost is its output tokens in micro-$.
    for key, provider, name, upstream, base in (
        ("long", openai, "gpt-long", "gpt-sim~tokens=5000", f"{simulator_url}/openai/v1"),
        (
            "overrun",
            openai,
            "gpt-overrun",
            "gpt-sim~tokens=3000~fault=overrun",
            f"{simulator_url}/openai/v1",
        ),
        (
            "claude-overrun",
            anthropic,
            "claude-overrun",
            "claude-sim~tokens=3000~fault=overrun",
            f"{simulator_url}/anthropic",
        ),
    ):
        model = f.model_create(
            provider, name, price_in=D(0), price_out=EXACT_OUT, max_output_tokens=8000
        )
        f.deployment_create(
            model, name=f"sim-{name}", base_url=base, upstream_name=upstream, credential=credential
        )
        w.models[key] = model
    reset_caches()
    return w


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(orjson.loads(line[6:]))
    return out


def test_without_max_tokens_the_limit_sent_is_what_the_tightest_layer_pays_for(
    gateway_server, world
):
    tenant = Tenant()
    budget = tenant.budget("member", "0.001")  # 1,000 output tokens of gpt-long
    body = {"model": "openai/gpt-long", "messages": user("Write at length.")}
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=30) as http:
        first = http.post("/v1/chat/completions", json=body)
        second = http.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    answer = first.json()
    # The model would write 5,000 tokens; it was asked for the 1,000 the budget covers.
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 1000
    assert D(first.headers["x-megarouter-cost-usd"]) == D("0.001")
    # Nothing is left for even a short answer: refused, naming the layer.
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "budget_exceeded"
    assert second.headers["x-megarouter-budget-layer"] == "member"
    usage_events_process()
    assert BudgetUsage.objects.get(budget=budget).spent == D("0.001")
    assert not Reservation.objects.filter(organization_id=tenant.org.pk).exists()


def test_a_stream_from_a_provider_ignoring_the_limit_is_cut_at_the_hold(gateway_server, world):
    tenant = Tenant()
    budget = tenant.budget("key", "0.0005")  # 500 output tokens
    body = {
        "model": "openai/gpt-overrun",
        "messages": user("Write at length."),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with (
        httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        events = sse_events(response)
    content = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content) == 500  # one token per chunk: exactly the hold's 500, not 3,000
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["length"]
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] <= 500
    assert D(events[-1]["x_megarouter"]["cost_usd"]) <= D("0.0005")
    usage_events_process()
    assert BudgetUsage.objects.get(budget=budget).spent <= D("0.0005")


def test_an_anthropic_stream_ignoring_its_max_tokens_ends_with_stop_reason_max_tokens(
    gateway_server, world
):
    tenant = Tenant()
    body = {
        "model": "anthropic/claude-overrun",
        "max_tokens": 40,
        "messages": user("Write at length."),
        "stream": True,
    }
    with (
        httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=30) as http,
        http.stream("POST", "/v1/messages", json=body) as response,
    ):
        assert response.status_code == 200
        events = sse_events(response)
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    assert len(deltas) == 40
    [stop] = [e for e in events if e["type"] == "message_delta"]
    assert stop["delta"]["stop_reason"] == "max_tokens"
    assert stop["usage"]["output_tokens"] <= 40
    assert events[-1]["type"] == "message_stop"


def test_a_non_stream_answer_past_the_limit_is_charged_the_hold_only(gateway_server, world):
    tenant = Tenant()
    body = {"model": "openai/gpt-overrun", "messages": user("Write."), "max_tokens": 200}
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=30) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3000  # the provider's own count
    assert D(response.headers["x-megarouter-cost-usd"]) == D("0.0002")  # 200 held
    usage_events_process()
    record = UsageRecord.objects.get(request_id=response.headers["x-megarouter-usage-id"])
    assert (record.tokens_out, record.cost) == (3000, D("0.0002"))


def test_a_prompt_above_chars_over_4_is_held_at_its_bound(gateway_server, world):
    """40,000 "!" are 40,000 tokens to the simulator (and to byte-level tokenizers) but
    10,000 to characters / 4. gpt-sim charges $2 per million input tokens: the prompt costs
    $0.08, which a $0.05 budget must refuse, and a $0.09 budget must admit."""
    body = {"model": "openai/gpt-sim", "messages": user("!" * 40_000), "max_tokens": 1}
    refused_tenant, admitted_tenant = Tenant(), Tenant()
    refused_tenant.budget("key", "0.05")
    budget = admitted_tenant.budget("key", "0.09")
    with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
        refused = http.post("/v1/chat/completions", json=body, headers=refused_tenant.headers)
        admitted = http.post("/v1/chat/completions", json=body, headers=admitted_tenant.headers)
    assert refused.status_code == 429
    assert admitted.status_code == 200, admitted.text
    prompt = admitted.json()["usage"]["prompt_tokens"]
    assert prompt >= 40_000
    assert D(admitted.headers["x-megarouter-cost-usd"]) == prompt * f.PRICE_IN + 1 * f.PRICE_OUT
    usage_events_process()
    assert BudgetUsage.objects.get(budget=budget).spent <= D("0.09")
