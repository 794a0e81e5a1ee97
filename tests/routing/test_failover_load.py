"""Primary provider down hard, the next failing 30 % of requests: concurrent requests through
run_with_failover against the simulator all succeed, and the dead primary stops being called
once its breaker opens. (bench/failover.py runs the same with 2,000 requests.)"""

from __future__ import annotations

import asyncio

import pytest

from routing.failover import FailoverConfig, run_with_failover
from routing.health import HealthConfig
from tests.routing.simulated import candidate, chat, complete_attempt, fault_id, make_store

pytestmark = pytest.mark.usefixtures("close_clients")

REQUESTS = 200
CONCURRENCY = 20


async def test_primary_down_and_next_flaky_requests_still_succeed(simulator_url, stores):
    store = make_store(HealthConfig(failures_to_open=5, cooldown_s=30.0, refresh_interval=0.05))
    stores.append(store)
    fid = fault_id()
    down = candidate(
        simulator_url, 1, "gpt-x", provider="down", base_url="http://127.0.0.1:9/openai/v1"
    )
    flaky = candidate(
        simulator_url,
        2,
        f"gpt-x~fault=503~pct=30~seed=7~retry_after=5~id={fid}",
        provider="flaky",
        model_id="down/gpt-x",
    )
    healthy = candidate(simulator_url, 3, "gpt-x", provider="steady", model_id="down/gpt-x")
    config = FailoverConfig(
        max_attempts=4, max_total_s=10.0, ttft_timeout_s=2.0, attempt_timeout_s=2.0
    )
    gate = asyncio.Semaphore(CONCURRENCY)
    attempt = complete_attempt(chat())

    async def one():
        async with gate:
            try:
                result = await run_with_failover(
                    [down, flaky, healthy], attempt, config=config, store=store
                )
            except Exception:
                return None
            return result

    results = await asyncio.gather(*(one() for _ in range(REQUESTS)))
    ok = [r for r in results if r is not None]
    assert len(ok) == REQUESTS  # >= 99.9 %
    assert {r.candidate.provider for r in ok} == {"flaky", "steady"}
    primary_calls = sum(
        1 for r in ok for a in r.attempts if a.deployment_id == 1 and a.outcome == "connection"
    )
    # every request in the first concurrent wave may try it; then the breaker is open
    assert primary_calls <= CONCURRENCY + 5
    flaky_failures = sum(1 for r in ok for a in r.attempts if a.outcome == "overloaded")
    assert 0 < flaky_failures < REQUESTS * 0.5
