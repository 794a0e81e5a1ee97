"""Celery tasks of the gateway. ``gateway.probe_deployments`` (celery beat, every
``ROUTING_PROBE_INTERVAL_S``) sends one cheap request to every enabled deployment through the
adapters and feeds the routing engine's health store: latency samples, failures (which count
towards the circuit breaker), and half-open trials for open breakers, so a deployment that
recovers is found even when no traffic reaches it. docs/failover.md, "Probes"."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from celery import shared_task
from django.conf import settings

from gateway.http import Timeouts, aclose_clients
from gateway.providers.adapters import get_adapter
from gateway.providers.endpoints import endpoint_for
from gateway.providers.types import ChatRequest, EmbeddingRequest, Message
from routing.breaker import NOT_HEALTH_FAILURES, breaker_allow
from routing.catalog import CatalogSnapshot, DeploymentInfo, catalog_snapshot
from routing.health import HealthStore, health_store

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0
PROBE_CONCURRENCY = 16


async def probe_one(
    snapshot: CatalogSnapshot,
    deployment: DeploymentInfo,
    *,
    store: HealthStore,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> str:
    """Probe one deployment; returns "ok", "skipped" (breaker open, cooling down) or the
    failure's kind."""
    if not breaker_allow(deployment.id, store=store):
        return "skipped"
    endpoint = endpoint_for(snapshot, deployment)
    adapter = get_adapter(deployment.kind)
    timeouts = Timeouts(
        connect=min(5.0, timeout_s), first_byte=timeout_s, stall=timeout_s, total=timeout_s
    )
    started = time.perf_counter()
    try:
        if snapshot.models[deployment.model].mode == "embedding":
            await adapter.embed(endpoint, EmbeddingRequest(input=["ping"]), timeouts=timeouts)
        else:
            request = ChatRequest(messages=[Message(role="user", content="ping")], max_tokens=1)
            await adapter.complete(endpoint, request, timeouts=timeouts)
    except Exception as error:
        kind = getattr(error, "kind", None)
        if kind is None:
            raise
        value = str(getattr(kind, "value", kind))
        if value not in NOT_HEALTH_FAILURES:
            store.record(deployment.id, ok=False, urgent=True)
        return value
    store.record(deployment.id, ok=True, latency_ms=(time.perf_counter() - started) * 1000)
    return "ok"


async def probe_all(
    snapshot: CatalogSnapshot,
    *,
    store: HealthStore | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
    concurrency: int = PROBE_CONCURRENCY,
    close_clients: bool = True,
) -> dict[str, str]:
    """Probe every enabled deployment of the snapshot; ``{deployment name: outcome}``.
    ``close_clients``: close the HTTP clients afterwards (a Celery task's event loop ends; a
    gateway process keeps its shared client)."""
    store = store or health_store()
    gate = asyncio.Semaphore(concurrency)
    deployments = sorted(
        (d for group in snapshot.deployments.values() for d in group), key=lambda d: d.id
    )

    async def one(deployment: DeploymentInfo) -> str:
        async with gate:
            return await probe_one(snapshot, deployment, store=store, timeout_s=timeout_s)

    try:
        outcomes = await asyncio.gather(*(one(d) for d in deployments))
    finally:
        store.flush()
        if close_clients:
            await aclose_clients()
    return {d.name: outcome for d, outcome in zip(deployments, outcomes, strict=True)}


async def probe_forever(
    *, interval_s: float | None = None, first_s: float = 2.0, rounds: int | None = None
) -> None:
    """The gateway process's own probes (``ROUTING_PROBES_IN_PROCESS``, the embedded mode):
    every ``ROUTING_PROBE_INTERVAL_S`` into this process's health store, the first soon after
    start-up; a failed round is logged and the next one runs. ``rounds``: stop after that
    many (tests)."""
    from routing.catalog import acatalog_snapshot

    await asyncio.sleep(first_s)
    done = 0
    while rounds is None or done < rounds:
        if settings.ROUTING_PROBES_IN_PROCESS:
            try:
                await probe_all(await acatalog_snapshot(), close_clients=False)
            except Exception:
                log.warning("in-process probes failed; trying again next round", exc_info=True)
        done += 1
        if rounds is None or done < rounds:
            await asyncio.sleep(interval_s or settings.ROUTING_PROBE_INTERVAL_S)


@shared_task(name="gateway.probe_deployments", ignore_result=True)
def probe_deployments() -> dict[str, Any]:
    """Beat task: probe every enabled deployment once; returns counts by outcome. Stands down
    when the gateway processes probe themselves (no shared store for its results)."""
    if settings.ROUTING_PROBES_IN_PROCESS:
        return {"skipped": "the gateway processes probe in-process (no Redis)"}
    results = asyncio.run(probe_all(catalog_snapshot()))
    counts: dict[str, int] = {}
    for outcome in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
