"""Cache-aware conversations through the real server and the simulator's prefix cache: a
conversation routed with auto stays on the deployment that holds its prompt cache (one model,
two equally weighted deployments, each its own cache), the provider reports the cached tokens
and the charge prices them at the cached-input rate; nothing of the text is kept."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from billing.models import UsageRecord
from billing.tasks import usage_events_process
from tests.gateway import factories as f
from tests.gateway.conftest import reset_caches
from tests.gateway.test_api_billing import Tenant

pytestmark = pytest.mark.django_db(transaction=True)

PRICE_IN, PRICE_OUT, CACHED_IN = Decimal("0.000001"), Decimal("0.000002"), Decimal("0.0000001")
# about 1,600 simulator tokens: above every provider's minimum cacheable prompt (1,024)
SYSTEM = "You answer questions about the billing ledger, briefly and exactly. " * 140


@pytest.fixture
def cache_world(gateway_server: Any, simulator_url: str) -> None:
    openai = f.provider_create("openai", "openai", f"{simulator_url}/openai/v1")
    credential = f.credential_create()
    model = f.model_create(
        openai, "gpt-cache", price_in=PRICE_IN, price_out=PRICE_OUT, cached_in=CACHED_IN
    )
    for name in ("sim-cache-a", "sim-cache-b"):  # one upstream model each: separate caches
        f.deployment_create(
            model,
            name=name,
            base_url=f"{simulator_url}/openai/v1",
            upstream_name=name.replace("sim-", "gpt-"),
            credential=credential,
        )
    reset_caches()


def turn(http: httpx.Client, messages: list[dict[str, Any]]) -> tuple[dict, dict, httpx.Response]:
    response = http.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": messages, "max_tokens": 20},
        headers={"x-megarouter-debug": "1"},
    )
    assert response.status_code == 200, response.text
    return response.json(), orjson.loads(response.headers["x-megarouter-route"]), response


def test_a_conversation_stays_on_the_deployment_holding_its_cache(gateway_server, cache_world):
    tenant = Tenant(allowed_models=["openai/gpt-cache"])
    picked, cached, ids = [], [], []
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is an append-only ledger?"},
        ]
        for i in range(8):
            body, explain, response = turn(http, messages)
            picked.append(explain["deployment"]["picked"])
            details = body["usage"].get("prompt_tokens_details") or {}
            cached.append(details.get("cached_tokens", 0))
            ids.append(response.headers["x-megarouter-usage-id"])
            if i:
                note = explain["prompt_cache"]
                assert note["kept"] is True and note["model"] == "openai/gpt-cache"
            else:
                assert "prompt_cache" not in explain  # nothing to recall on the first turn
            messages += [
                {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                {"role": "user", "content": f"And question {i + 2}?"},
            ]
    # 8 turns, one deployment: with a 50/50 spread and no stickiness, 1 chance in 128
    assert len(set(picked)) == 1
    assert cached[0] == 0 and all(c >= 1024 for c in cached[1:])
    usage_events_process()
    for request_id, tokens in zip(ids, cached, strict=True):
        record = UsageRecord.objects.get(request_id=request_id)
        assert record.tokens_cached == tokens
        expected = (
            tokens * CACHED_IN
            + (record.tokens_in - tokens) * PRICE_IN
            + record.tokens_out * PRICE_OUT
        )
        assert record.cost == expected
        assert "ledger" not in orjson.dumps(record.routing).decode()


C_IN, C_OUT = Decimal("0.000003"), Decimal("0.000015")
C_READ, C_WRITE = Decimal("0.0000003"), Decimal("0.00000375")


@pytest.fixture
def anthropic_world(cache_world: None, simulator_url: str) -> None:
    anthropic = f.provider_create("anthropic", "anthropic", f"{simulator_url}/anthropic")
    model = f.model_create(
        anthropic,
        "claude-cache",
        price_in=C_IN,
        price_out=C_OUT,
        cached_in=C_READ,
        cache_write=C_WRITE,
        quality_tier=3,
    )
    f.deployment_create(
        model,
        name="sim-claude-cache",
        base_url=f"{simulator_url}/anthropic",
        upstream_name="claude-cache",
        credential=f.credential_create("anthropic-sim"),
    )
    reset_caches()


def message(http: httpx.Client, model: str, turns: list[dict[str, Any]], **extra: Any) -> Any:
    body = {
        "model": model,
        "max_tokens": 20,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "messages": turns,
        **extra,
    }
    return http.post("/v1/messages", json=body, headers={"x-megarouter-debug": "1"})


def test_anthropic_cache_breakpoints_reach_the_provider_and_are_priced(
    gateway_server, anthropic_world
):
    tenant = Tenant()
    turns: list[dict[str, Any]] = [{"role": "user", "content": "What is a ledger?"}]
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
        first = message(http, "anthropic/claude-cache", turns)
        assert first.status_code == 200, first.text
        turns += [
            {"role": "assistant", "content": first.json()["content"][0]["text"]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "And a journal?",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
        ]
        second = message(http, "anthropic/claude-cache", turns)
        assert second.status_code == 200, second.text
        # five breakpoints: refused as Anthropic refuses them, before any call
        many = [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}] * 4
        refused = message(http, "anthropic/claude-cache", [{"role": "user", "content": many}])
        # the breakpoint cannot be sent to an OpenAI model: dropped, and the explanation says so
        dropped = message(http, "openai/gpt-cache", turns)
    one, two = first.json()["usage"], second.json()["usage"]
    # turn 1 writes the system prompt to the cache; turn 2 reads it and writes its own turns
    assert one["cache_read_input_tokens"] == 0 and one["cache_creation_input_tokens"] >= 1024
    assert two["cache_read_input_tokens"] == one["cache_creation_input_tokens"]
    assert two["cache_creation_input_tokens"] > 0
    for response, usage in ((first, one), (second, two)):
        expected = (
            usage["input_tokens"] * C_IN
            + usage["cache_read_input_tokens"] * C_READ
            + usage["cache_creation_input_tokens"] * C_WRITE
            + usage["output_tokens"] * C_OUT
        )
        assert Decimal(response.headers["x-megarouter-cost-usd"]) == expected
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "maximum of 4 blocks with cache_control" in refused.json()["error"]["message"]
    assert dropped.status_code == 200
    note = orjson.loads(dropped.headers["x-megarouter-route"])["cache_control"]
    assert note == "2 breakpoint(s) not sent: openai caches prompts by itself"
