"""The Celery probe task against the simulator: healthy, failing and unreachable deployments
feed the health store; an open breaker is probed only when its trial is due, and a successful
probe closes it."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.tasks import probe_all, probe_deployments
from routing.catalog import catalog_snapshot
from routing.crypto import CredentialSecret
from routing.health import HealthConfig, health_store_set
from routing.models import Deployment
from routing.services import credential_upsert
from tests.routing.factories import ModelFactory, ProviderFactory
from tests.routing.simulated import fault_id, make_store

pytestmark = pytest.mark.django_db


@pytest.fixture
def probe_catalog(simulator_url):
    provider = ProviderFactory(slug="simprov", base_url=f"{simulator_url}/openai/v1")
    credential, _ = credential_upsert(
        name="sim", kind="api_key", secret=CredentialSecret(api_key="sk-sim")
    )
    chat = ModelFactory(provider=provider, provider_model_name="chat-model")
    embed = ModelFactory(provider=provider, provider_model_name="embed-model", mode="embedding")
    fid = fault_id()
    rows = {}
    for name, model, upstream, base in [
        ("healthy", chat, "chat-model", ""),
        ("embedder", embed, "embed-model", ""),
        ("failing", chat, f"chat-model~fault=503~id={fid}", ""),
        ("unreachable", chat, "chat-model", "http://127.0.0.1:9/openai/v1"),
    ]:
        rows[name] = Deployment.objects.create(
            name=name,
            model=model,
            provider=provider,
            provider_model_name=upstream,
            base_url=base,
            credential=credential,
        )
    return rows


def test_probe_feeds_health_and_the_breaker(probe_catalog, stores):
    store = make_store(HealthConfig(failures_to_open=2, cooldown_s=0.2, refresh_interval=0.0))
    stores.append(store)
    snapshot = catalog_snapshot()
    first = asyncio.run(probe_all(snapshot, store=store, timeout_s=2.0))
    assert first == {
        "healthy": "ok",
        "embedder": "ok",
        "failing": "overloaded",
        "unreachable": "connection",
    }
    d = probe_catalog
    assert store.view(d["healthy"].pk).latency_ms is not None
    assert store.view(d["healthy"].pk).samples == 1
    assert store.view(d["failing"].pk).consecutive_failures == 1
    second = asyncio.run(probe_all(snapshot, store=store, timeout_s=2.0))
    assert second["failing"] == "overloaded"
    assert store.view(d["failing"].pk).state == 1  # open after two failed probes
    third = asyncio.run(probe_all(snapshot, store=store, timeout_s=2.0))
    assert third["failing"] == "skipped"  # cooling down: no call
    assert third["unreachable"] == "skipped"
    time.sleep(0.25)
    fourth = asyncio.run(probe_all(snapshot, store=store, timeout_s=2.0))
    assert fourth["failing"] == "overloaded"  # the half-open trial failed: open again
    assert store.view(d["failing"].pk).state == 1


def test_a_successful_probe_closes_an_open_breaker(probe_catalog, stores):
    store = make_store(HealthConfig(failures_to_open=1, cooldown_s=0.0, refresh_interval=0.0))
    stores.append(store)
    healthy = probe_catalog["healthy"].pk
    store.record(healthy, ok=False)
    assert store.view(healthy).state == 1
    results = asyncio.run(probe_all(catalog_snapshot(), store=store, timeout_s=2.0))
    assert results["healthy"] == "ok"
    assert store.view(healthy).state == 0


def test_the_beat_task_probes_through_the_default_store(probe_catalog, stores):
    store = make_store(HealthConfig(refresh_interval=0.0))
    stores.append(store)
    health_store_set(store)
    try:
        counts = probe_deployments()
    finally:
        health_store_set(None)
    assert counts == {"ok": 2, "overloaded": 1, "connection": 1}


def test_without_redis_the_gateway_process_probes_and_the_beat_task_stands_down(
    probe_catalog, stores, settings
):
    """Embedded mode: health lives in each process's memory, so the gateway process probes
    into its own store (the one its routing and its console read) and the Celery task, whose
    results no other process would see, does nothing."""
    from gateway.api.asgi import GatewayASGI
    from gateway.http import aclose_clients
    from gateway.tasks import probe_forever

    settings.ROUTING_PROBES_IN_PROCESS = True
    assert probe_deployments() == {"skipped": "the gateway processes probe in-process (no Redis)"}
    store = make_store(HealthConfig(refresh_interval=0.0))
    stores.append(store)
    health_store_set(store)
    catalog_snapshot()  # built here, on the test's connection (the probes then reuse it)

    async def one_round() -> None:
        try:
            await probe_forever(first_s=0, rounds=1)
        finally:  # the gateway process keeps its client; this test's loop ends here
            await aclose_clients()

    try:
        asyncio.run(one_round())
    finally:
        health_store_set(None)
    assert store.view(probe_catalog["healthy"].pk).samples == 1
    assert store.view(probe_catalog["failing"].pk).consecutive_failures == 1

    async def lifespan() -> tuple[bool, bool]:
        app = GatewayASGI(None)
        messages = asyncio.Queue()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            messages.put_nowait({"type": kind})
        sent: list[str] = []

        async def send(message):
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                running.append(app._probes is not None and not app._probes.done())

        running: list[bool] = []
        await app.lifespan(messages.get, send)
        await asyncio.sleep(0)
        return running == [True], app._probes.cancelled()

    assert asyncio.run(lifespan()) == (True, True)  # started with the process, stopped with it
