"""How throughput grows with gateway processes: 1, 2 and 4 uvicorn workers in one gateway, and
two gateway groups (each its own uvicorn supervisor on a port of its own) sharing one
PostgreSQL and one Redis, as two hosts would.

    .venv/bin/python bench/scale_out.py [--seconds 8] [--connections 64] [--shapes 1x1 1x2 ...]

A shape ``GxW`` is G groups of W workers. Production mode (bench/harness.production_env),
seeded once through the project's services (bench/seed.py: budgets at the organization,
member and key layers, so every request is admitted and settled in Redis), the 20 ms upstream
of the simulator. Each shape is started fresh, warmed up, then one wrk per group runs at the
same time with ``connections / G`` connections each; the figure is the sum of their requests/s
(and the worst p99). Every response must be a 200: non-2xx and socket errors are reported.

On a 2-core machine more than two busy processes cannot add CPU: the figures show where the
machine, not the gateway, stops the growth. ``bench/budget_exactness.py --groups 2`` checks
that budgets stay exact across groups.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h

MODEL = "benchsim/bench-20ms"


def shape(text: str) -> tuple[int, int]:
    groups, _, workers = text.partition("x")
    if not (groups.isdigit() and workers.isdigit() and int(groups) > 0 and int(workers) > 0):
        raise argparse.ArgumentTypeError(f"not a GxW shape: {text!r}")
    return int(groups), int(workers)


def measure(
    env: dict[str, str], tmp: Path, key: str, groups: int, workers: int, args: Any
) -> dict[str, Any]:
    script = h.wrk_script(tmp / "scale.lua", MODEL, key)
    with h.services() as started:
        ports = [h.free_port() for _ in range(groups)]
        for group, port in enumerate(ports):
            log = h.ROOT / "bench" / "results" / f"scale-{groups}x{workers}-{group}.log"
            started.append(h.gateway_service(port, env, workers, log).start())
        urls = [f"http://{h.HOST}:{port}/v1/chat/completions" for port in ports]
        for url in urls:  # every worker imports lazily on its first requests
            h.wrk(url, script, 4 * workers, 2)
        rows: list[dict[str, Any]] = [{} for _ in urls]
        per_group = max(1, args.connections // groups)

        def load(index: int) -> None:
            rows[index] = h.wrk(urls[index], script, per_group, args.seconds)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(groups)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {
        "shape": f"{groups}x{workers}",
        "processes": groups * workers,
        "rps": sum(r["rps"] for r in rows),
        "p99_ms": max(r.get("p99", 0.0) for r in rows),
        "non2xx": sum(r["non2xx"] for r in rows),
        "socket_errors": sum(r["socket_errors"] for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--shapes", nargs="+", type=shape, default=[(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)]
    )
    parser.add_argument("--database-url", default=h.DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    args = parser.parse_args()
    run_id = "s" + dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    (h.ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    print(f"[scale] machine {h.machine_info()}", flush=True)
    out = []
    with tempfile.TemporaryDirectory(prefix="mr-scale-") as tmp_name, h.services() as started:
        tmp = Path(tmp_name)
        env = h.production_env(tmp, database_url=args.database_url, redis_url=args.redis_url)
        sim_port = h.free_port()
        started.append(h.simulator_service(sim_port, h.base_env(tmp)).start())
        seeded = h.seed(env, f"http://{h.HOST}:{sim_port}", run_id)
        for groups, workers in args.shapes:
            row = measure(env, tmp, seeded["key"], groups, workers, args)
            out.append(row)
            print(f"[scale] {row}", flush=True)
    base = out[0]["rps"] or 1.0
    print(f"\nc={args.connections} in all, {args.seconds} s, 20 ms upstream, production mode")
    print("| groups x workers | processes | req/s | vs the first | p99 (ms) | non-2xx | errors |")
    print("|---|---|---|---|---|---|---|")
    for row in out:
        print(
            f"| {row['shape']} | {row['processes']} | {row['rps']:,.0f} | "
            f"{row['rps'] / base:.2f}x | {row['p99_ms']:.1f} | {row['non2xx']} | "
            f"{row['socket_errors']} |"
        )
    return 1 if any(r["non2xx"] or r["socket_errors"] for r in out) else 0


if __name__ == "__main__":
    sys.exit(main())
