"""Deadlines that compose, through the server against the simulator: the time to first token
counts to the first content (a role-only chunk is not a token), and an attempt never uses up
the request's total while a fallback is left. Settings are shortened per test; the rules are
the defaults' (docs/failover.md, "Deadlines")."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import orjson
import pytest
from django.test import override_settings

from tests.gateway import factories as f


@pytest.fixture(scope="module")
def models(sim_world):
    """Two models whose primary misbehaves and whose backup answers (this module's own world:
    other modules route ``auto`` over theirs)."""
    from tests.gateway import factories as f
    from tests.gateway.conftest import reset_caches

    faults = {
        "gpt-role-then-stall": "gpt-sim~fault=stall~after=0~stall_ms=20000",
        "gpt-hung-first": "gpt-sim~fault=hang",
    }
    credential = f.credential_create()
    for name, primary in faults.items():
        model = f.model_create(sim_world.models["gpt"].provider, name)
        for priority, upstream in enumerate((primary, "gpt-sim")):
            f.deployment_create(
                model,
                name=f"{name}-{priority}",
                base_url=f"{sim_world.sim_url}/openai/v1",
                upstream_name=upstream,
                priority=priority,
                credential=credential,
            )
    reset_caches()
    return {name: f"openai/{name}" for name in faults}


@pytest.fixture(scope="module")
def client(gateway_server, sim_world, models):
    with httpx.Client(base_url=gateway_server.url, headers=sim_world.auth(), timeout=15) as http:
        yield http


def chat(model: str, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "Say something"}], **extra}


def test_a_role_chunk_does_not_satisfy_the_time_to_first_token(client, models):
    """The primary sends its role chunk, then nothing: it fails over at the TTFT deadline,
    not after the longer stall timeout."""
    with override_settings(ROUTING_TTFT_TIMEOUT_S=0.5, ROUTING_STALL_TIMEOUT_S=10):
        started = time.monotonic()
        response = client.post(
            "/v1/chat/completions", json=chat(models["gpt-role-then-stall"], stream=True)
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["x-megarouter-attempts"] == "2"
    events = [
        block[len("data: ") :]
        for block in response.text.split("\n\n")
        if block.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    assert any(orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1])
    assert 0.5 <= elapsed < 3


def test_a_hung_primary_leaves_room_for_the_fallback_whatever_the_settings(client, models):
    """An attempt timeout longer than the request's total: the hung primary gets half of the
    total, the backup answers within it."""
    with override_settings(ROUTING_ATTEMPT_TIMEOUT_S=30, ROUTING_FAILOVER_MAX_SECONDS=1.2):
        started = time.monotonic()
        response = client.post("/v1/chat/completions", json=chat(models["gpt-hung-first"]))
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["x-megarouter-attempts"] == "2"
    assert 0.6 <= elapsed < 1.2 + 0.5


def test_a_hung_non_streaming_primary_is_hedged_at_the_time_to_first_content(client, models):
    """The defaults' attempt timeout (120 s) is left as it is: the backup starts beside the
    hung primary at the TTFT deadline and its answer is the one relayed and charged."""
    with override_settings(ROUTING_TTFT_TIMEOUT_S=0.5):
        started = time.monotonic()
        response = client.post("/v1/chat/completions", json=chat(models["gpt-hung-first"]))
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert 0.5 <= elapsed < 0.5 + 1.0  # the TTFT deadline + 1 s, not the attempt timeout
    assert response.headers["x-megarouter-attempts"] == "2"
    usage = response.json()["usage"]
    cost = usage["prompt_tokens"] * f.PRICE_IN + usage["completion_tokens"] * f.PRICE_OUT
    assert Decimal(response.headers["x-megarouter-cost-usd"]) == cost
