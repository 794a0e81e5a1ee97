"""Every model ``/v1/models`` lists can be called: the bundled catalog imported and the demo
operator file applied (as ``make run`` does), pointed at the test simulator; each listed model
is called through the endpoint its mode says, with real adapters in every wire format (OpenAI,
Azure, Anthropic, Gemini, Bedrock). Also the embeddings ``dimensions`` check against the
catalog's vector size."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import time_machine
from django.db import connections

from tests.gateway import factories as f
from tests.gateway.conftest import reset_caches

ROOT = Path(__file__).resolve().parents[2]
# The catalog's deprecation dates are read against this day, not the calendar's.
TODAY = datetime(2026, 12, 4, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_key(committed_db, simulator_url):
    from routing.catalog_import import catalog_import
    from routing.operator_config import config_apply_file

    with time_machine.travel(TODAY, tick=False):
        catalog_import()
        config_apply_file(ROOT / "config" / "demo.toml", environ={"SIMULATOR_URL": simulator_url})
    reset_caches()
    tenant = f.tenant_create()
    return tenant, f.api_key_create(tenant)


@pytest.fixture(scope="module")
def client(gateway_server, demo_key):
    headers = {"authorization": f"Bearer {demo_key[1]}"}
    with (
        time_machine.travel(TODAY, tick=True),
        httpx.Client(base_url=gateway_server.url, headers=headers, timeout=30) as http,
    ):
        yield http


def _call(client: httpx.Client, model: str, mode: str) -> httpx.Response:
    if mode == "embedding":
        return client.post("/v1/embeddings", json={"model": model, "input": ["hello", "world"]})
    if mode == "completion":
        return client.post(
            "/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 4}
        )
    messages = [{"role": "user", "content": "Say hello"}]
    return client.post(
        "/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 8}
    )


def test_every_listed_model_answers_through_the_endpoint_of_its_mode(client):
    from routing.models import Model

    listed = client.get("/v1/models")
    assert listed.status_code == 200, listed.text
    ids = [m["id"] for m in listed.json()["data"] if not m["id"].startswith("auto")]
    assert len(ids) >= 300
    modes = dict(Model.objects.filter(canonical_id__in=ids).values_list("canonical_id", "mode"))
    assert set(modes) == set(ids)  # every listed id is a catalog model (aliases aside)
    by_mode = {mode: sum(1 for m in modes.values() if m == mode) for mode in set(modes.values())}
    assert by_mode.get("embedding", 0) >= 4 and by_mode.get("chat", 0) >= 20, by_mode
    providers = {model_id.split("/", 1)[0] for model_id in ids}
    assert {"openai", "anthropic", "gemini", "mistral", "deepseek", "xai"} <= providers
    failures = {}
    for model_id in ids:
        response = _call(client, model_id, modes[model_id])
        if response.status_code != 200:
            failures[model_id] = (response.status_code, response.text[:200])
            continue
        assert response.headers["x-megarouter-model"] == model_id
        assert Decimal(response.headers["x-megarouter-cost-usd"]) >= 0
    assert failures == {}


def test_created_is_the_release_date_else_when_the_model_entered_the_catalog(client):
    from routing.models import Model

    listed = {m["id"]: m["created"] for m in client.get("/v1/models").json()["data"]}
    rows = Model.objects.filter(canonical_id__in=listed).values_list(
        "canonical_id", "released_on", "created_at"
    )
    expected = {
        model_id: int((datetime.combine(day, time(), UTC) if day else added).timestamp())
        for model_id, day, added in rows
    }
    assert {m: c for m, c in listed.items() if not m.startswith("auto")} == expected
    assert listed["openai/gpt-4o-2024-08-06"] == 1722902400  # 2024-08-06, from its name
    added = Model.objects.get(canonical_id="openai/gpt-5").created_at  # no date in the file
    assert listed["openai/gpt-5"] == int(added.timestamp())
    assert {m: c for m, c in listed.items() if m.startswith("auto")} == {
        "auto": 0, "auto:balanced": 0, "auto:cost": 0, "auto:latency": 0, "auto:availability": 0
    }  # fmt: skip
    one = client.get("/v1/models/openai/gpt-4o-2024-08-06").json()
    assert one["created"] == 1722902400


def test_gemini_embeddings_are_served_and_charged_by_the_estimate(client):
    response = client.post(
        "/v1/embeddings",
        json={"model": "gemini/gemini-embedding-001", "input": ["a b c", "d"], "dimensions": 16},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [len(item["embedding"]) for item in body["data"]] == [16, 16]
    assert response.headers["x-megarouter-provider"] == "gemini"
    tokens = body["usage"]["prompt_tokens"]
    assert tokens > 0  # Gemini reports none: the gateway's estimate, charged at list price
    assert Decimal(response.headers["x-megarouter-cost-usd"]) == tokens * Decimal("1.5e-7")


def test_dimensions_past_the_models_vector_size_is_a_400_that_charges_nothing(client, demo_key):
    from billing.models import BillingAccount

    def books() -> tuple[Decimal, Decimal]:
        # Read on a connection of its own, outside the test's transaction: a read there would
        # hold SQLite's table lock on the account the server thread must write.
        found: list[tuple[Decimal, Decimal]] = []

        def read() -> None:
            try:
                account = BillingAccount.objects.get(organization=demo_key[0].organization)
                found.append((account.balance, account.held))
            finally:
                connections.close_all()

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        return found[0]

    before = books()
    response = client.post(
        "/v1/embeddings",
        json={"model": "openai/text-embedding-3-small", "input": "x", "dimensions": 10**9},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "dimensions")
    assert "at most 1536" in error["message"]
    too_big = client.post(
        "/v1/embeddings", json={"model": "auto", "input": "x", "dimensions": 100_000}
    )
    assert too_big.status_code == 400, too_big.text
    assert books() == before  # refused before any call: nothing held, nothing charged
    # under auto, a model the catalog says returns 3,000 dimensions is chosen, never a smaller
    # one or one whose size it does not know
    auto = client.post(
        "/v1/embeddings", json={"model": "auto:cost", "input": "x", "dimensions": 3000}
    )
    assert auto.status_code == 200, auto.text
    assert len(auto.json()["data"][0]["embedding"]) == 3000
    assert auto.headers["x-megarouter-model"] in {
        "openai/text-embedding-3-large",
        "gemini/gemini-embedding-001",
    }
