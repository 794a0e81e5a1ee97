"""Measure the provider call path (adapter + shared httpx client) against the simulator, with
httpx's default transport and with the aiohttp transport (httpx-aiohttp).

    .venv/bin/python bench/transport.py [--requests 3000] [--rounds 3] [--stream]

Starts ``manage.py simulate_providers`` (fast mode, its own process), then for each transport
runs OpenAIAdapter.complete (or .stream) at concurrency 1 and 32 on uvloop and prints p50 /
p99 latency and requests per second: the median over ``--rounds`` rounds, transports
alternating so that background load hits both alike. Figures are in docs/providers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")

import django  # noqa: E402

django.setup()

from gateway import http  # noqa: E402
from gateway.providers.adapters import get_adapter  # noqa: E402
from gateway.providers.types import ChatRequest, Endpoint, Message  # noqa: E402


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "simulate_providers", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
    if not match:
        proc.terminate()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, match.group(1)


async def run(transport: str, url: str, concurrency: int, total: int, stream: bool) -> dict:
    loop = asyncio.get_running_loop()
    client = http.new_client(transport=http.make_transport(transport))
    http._clients[loop] = client
    adapter = get_adapter("openai")
    endpoint = Endpoint(
        kind="openai", base_url=url + "/openai/v1", model="gpt-4o-mini", api_key="k"
    )
    request = ChatRequest(
        messages=[Message(role="user", content="Say hello in one short sentence.")], max_tokens=32
    )
    latencies: list[float] = []
    remaining = total

    async def one() -> None:
        start = time.perf_counter()
        if stream:
            async for _chunk in adapter.stream(endpoint, request):
                pass
        else:
            await adapter.complete(endpoint, request)
        latencies.append(time.perf_counter() - start)

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    for _ in range(200):  # warm up the pool
        await one()
    latencies.clear()
    remaining = total
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await http.aclose_clients()
    ordered = sorted(latencies)
    return {
        "transport": transport,
        "c": concurrency,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "rps": len(ordered) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    import uvloop

    proc, url = start_simulator()
    try:
        mode = "stream" if args.stream else "complete"
        print(f"OpenAIAdapter.{mode} -> simulator at {url}, {args.requests} requests per row, "
              f"median of {args.rounds} rounds")  # fmt: skip
        results: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.rounds):
            for concurrency in (1, 32):
                for transport in ("httpx", "aiohttp"):
                    row = uvloop.run(run(transport, url, concurrency, args.requests, args.stream))
                    results.setdefault((transport, concurrency), []).append(row)
        print(f"{'transport':<10} {'c':>3} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for (transport, concurrency), rows in results.items():
            p50 = statistics.median(r["p50_ms"] for r in rows)
            p99 = statistics.median(r["p99_ms"] for r in rows)
            rps = statistics.median(r["rps"] for r in rows)
            print(f"{transport:<10} {concurrency:>3} {p50:>8.2f} {p99:>8.2f} {rps:>8.0f}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
