"""What failover costs, against the provider simulator (started here on a free port).

    .venv/bin/python bench/failover.py [--requests 2000] [--samples 300]

1. Breaker open: [open deployment, healthy] vs [healthy] alone, sequential requests; the
   difference of the medians (and p99s) is what skipping an open deployment adds.
2. Fresh connection refusal: [refused, healthy] with the breaker kept closed vs [healthy].
3. Primary provider down hard + the next failing 30 % (503) + a steady third deployment of the
   same model: ``--requests`` requests, 20 at a time; the share that succeeded.

Health lives in-process (LocalHealth) unless REDIS_URL is set (then Redis, as in production).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402

from gateway.http import aclose_clients  # noqa: E402
from gateway.simulator.server import Options, run_in_thread  # noqa: E402
from routing.failover import FailoverConfig, run_with_failover  # noqa: E402
from routing.health import HealthConfig, LocalHealth, RedisHealth  # noqa: E402
from tests.routing.simulated import candidate, chat, complete_attempt  # noqa: E402

CONFIG = FailoverConfig(max_attempts=4, max_total_s=10.0, ttft_timeout_s=2.0, attempt_timeout_s=2.0)


def new_store(**config):
    cfg = HealthConfig(**config)
    if settings.REDIS_URL:
        return RedisHealth(settings.REDIS_URL, key=f"bench:health:{uuid.uuid4().hex}", config=cfg)
    return LocalHealth(cfg)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def timed(cands, store, n: int) -> list[float]:
    attempt = complete_attempt(chat())
    for _ in range(20):  # warm the connection pool
        await run_with_failover(cands, attempt, config=CONFIG, store=store)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await run_with_failover(cands, attempt, config=CONFIG, store=store)
        out.append((time.perf_counter() - start) * 1000)
    return out


def report(name: str, base: list[float], other: list[float]) -> None:
    d50 = statistics.median(other) - statistics.median(base)
    d99 = pct(other, 0.99) - pct(base, 0.99)
    print(
        f"{name:<34} p50 {statistics.median(other):7.3f} ms  p99 {pct(other, 0.99):7.3f} ms"
        f"   added: p50 {d50:+.3f} ms  p99 {d99:+.3f} ms"
    )


async def main(args: argparse.Namespace, url: str) -> None:
    healthy = candidate(url, 3, "gpt-x", provider="steady")
    refused = candidate(url, 1, "gpt-x", provider="down", base_url="http://127.0.0.1:9/openai/v1")

    store = new_store()
    base = await timed([healthy], store, args.samples)
    print(f"{'healthy deployment alone':<34} p50 {statistics.median(base):7.3f} ms  "
          f"p99 {pct(base, 0.99):7.3f} ms")  # fmt: skip

    open_store = new_store(failures_to_open=1, cooldown_s=3600)
    open_store.record(1, ok=False)
    report(
        "breaker open, then healthy",
        base,
        await timed([refused, healthy], open_store, args.samples),
    )

    closed = new_store(failures_to_open=10**9, error_rate_to_open=1.0, min_requests=10**9)
    report(
        "connection refused, then healthy",
        base,
        await timed([refused, healthy], closed, args.samples),
    )

    flaky = candidate(
        url, 2, f"gpt-x~fault=503~pct=30~seed=11~retry_after=5~id={uuid.uuid4().hex}",
        provider="flaky", model_id="steady/gpt-x",
    )  # fmt: skip
    steady = candidate(url, 3, "gpt-x", provider="steady", model_id="steady/gpt-x")
    load_store = new_store(failures_to_open=5, cooldown_s=30)
    gate = asyncio.Semaphore(20)
    attempt = complete_attempt(chat())

    async def one() -> bool:
        async with gate:
            try:
                await run_with_failover(
                    [refused, flaky, steady], attempt, config=CONFIG, store=load_store
                )
            except Exception:
                return False
            return True

    start = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(args.requests)))
    elapsed = time.perf_counter() - start
    ok = sum(results)
    print(
        f"primary down + next 30 % failing: {ok}/{args.requests} succeeded "
        f"({100 * ok / args.requests:.2f} %) in {elapsed:.2f} s"
    )
    for s in (store, open_store, closed, load_store):
        if isinstance(s, RedisHealth):
            s.clear()
    await aclose_clients()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=300)
    arguments = parser.parse_args()
    sim_url, stop = run_in_thread(port=0, options=Options())
    try:
        print(f"health store: {'Redis' if settings.REDIS_URL else 'in-process'}")
        asyncio.run(main(arguments, sim_url))
    finally:
        stop()
