"""`make profile`: where a gateway worker spends its time under load, with py-spy.

    .venv/bin/python bench/profile.py [--seconds 10] [--connections 32] [--model bench-fast|auto]

Starts the simulator and the gateway in production mode (2 workers, as bench/run.py does),
drives wrk at the given concurrency and, meanwhile, samples every worker with
``py-spy record --format raw`` (collapsed stacks, 250 Hz, idle frames left out). Prints the
functions with the most samples on the CPU: "own" (the frame itself is running) and
"total" (the frame is on the stack), plus the raw stacks path for a flame graph
(``flamegraph.pl`` or speedscope accept it). Before those: the workers' CPU time per request
(from /proc, so other work on the machine barely moves it) and the share of samples per cost
of the warm path (``SPECIFIC``: parse, key context, routing, admission, settle, write-behind,
logging, metrics, the HTTP client transport, the server). ``--model auto`` sends ``auto`` with
a key limited to two models (bench-fast and its tenth-price twin), the routing decision on the
path. Environment variables pass through to the gateway (``BILLING_USAGE_LINGER_S=0 ...``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h

PY_SPY = Path(h.PY).parent / "py-spy"


def parse_collapsed(text: str) -> tuple[Counter[str], Counter[str], int]:
    """(own samples per frame, total samples per frame, all samples) from py-spy's raw
    (collapsed) output: ``frame;frame;frame COUNT`` per line."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return own, total, samples


# What each on-CPU sample is spent on, for docs/performance.md: a sample belongs to the first
# frame, from the leaf up, that a SPECIFIC rule names (so a Redis call made by the reserve step
# counts as admission, a JSON dump by the renderer as rendering); a sample no specific rule
# names belongs to the first frame a FALLBACK rule names (the server, the clients' other work),
# else to "event loop and other". A rule: (category, path prefix or None, function pattern).
SPECIFIC: list[tuple[str, str | None, str]] = [
    ("logging (request log line)", "logging/", ""),
    ("logging (request log line)", "megarouter/logging.py", ""),
    ("logging (request log line)", "megarouter/middleware.py", ""),
    ("metrics (Prometheus)", "prometheus_client/", ""),
    ("metrics (Prometheus)", "gateway/metrics.py", ""),
    ("tracing (OpenTelemetry)", "opentelemetry/", ""),
    ("tracing (OpenTelemetry)", "megarouter/tracing.py", ""),
    ("HTTP client transport (httpx, httpx-aiohttp, aiohttp)", "httpx/", ""),
    ("HTTP client transport (httpx, httpx-aiohttp, aiohttp)", "httpx_aiohttp/", ""),
    ("HTTP client transport (httpx, httpx-aiohttp, aiohttp)", "aiohttp/", ""),
    ("HTTP client transport (httpx, httpx-aiohttp, aiohttp)", "gateway/http.py", ""),
    ("usage write-behind (writer thread)", "billing/admission/writer.py", ""),
    ("usage write-behind (writer thread)", "billing/admission/redis.py", r"^UsageStream"),
    ("admission: reserve", "billing/admission/", r"reserve|_reserve_args|_periods"),
    ("admission: settle", "billing/admission/", r"settle|usage_event_row"),
    ("admission: other", "billing/admission/", ""),
    ("failed-request counts", "billing/failures.py", ""),
    ("routing decision", "routing/engine.py", ""),
    ("routing decision", "routing/strategies.py", ""),
    ("routing decision", "routing/complexity/", ""),
    ("routing decision", "routing/policies.py", ""),
    ("routing decision", "routing/eligibility.py", ""),
    ("routing decision", "routing/stickiness.py", ""),
    ("routing decision", "routing/catalog.py", ""),
    ("routing decision", "routing/tokens.py", ""),
    ("failover, breakers, deployment limits, health", "routing/failover.py", ""),
    ("failover, breakers, deployment limits, health", "routing/ratelimit.py", ""),
    ("failover, breakers, deployment limits, health", "routing/health.py", ""),
    ("failover, breakers, deployment limits, health", "routing/breaker.py", ""),
    ("authentication and key context", "gateway/auth.py", ""),
    ("authentication and key context", "orgs/keys.py", ""),
    ("authentication and key context", "orgs/secrets.py", ""),
    ("response render (wire format out)", "gateway/wire/", r"render|_json$|usage_json|_content"),
    ("request parse (JSON in, normalization)", "gateway/wire/", ""),
    ("request parse (JSON in, normalization)", "gateway/api/", r"parse_json"),
    ("provider adapter (upstream request and reply)", "gateway/providers/", ""),
    ("gateway pipeline and handlers", "gateway/pipeline.py", ""),
    ("gateway pipeline and handlers", "gateway/api/handlers.py", ""),
    ("gateway pipeline and handlers", "gateway/errors.py", ""),
]
FALLBACK: list[tuple[str, str | None, str]] = [
    ("HTTP server (uvicorn, httptools, the ASGI front door)", "uvicorn/", ""),
    ("HTTP server (uvicorn, httptools, the ASGI front door)", "gateway/api/asgi.py", ""),
    ("Redis client, other", "redis/", ""),
    ("database, other", "django/db/", ""),
    ("database, other", "psycopg/", ""),
]
OTHER = "event loop and other (uvloop, asyncio, threads)"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^():]*):\d+\)$")


def _matches(frame: str, rules: list[tuple[str, str | None, str]]) -> str | None:
    found = _FRAME.match(frame)
    if not found:
        return None
    path, func = found["path"], found["func"]
    for category, prefix, pattern in rules:
        if prefix and not path.startswith(prefix):
            continue
        if pattern and not re.search(pattern, func):
            continue
        return category
    return None


def categorize(text: str) -> tuple[Counter[str], int]:
    """(samples per category, all samples) of py-spy's collapsed output (see SPECIFIC)."""
    shares: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")[::-1]
        category = next((c for f in frames if (c := _matches(f, SPECIFIC))), None)
        category = category or next((c for f in frames if (c := _matches(f, FALLBACK))), None)
        shares[category or OTHER] += count
    return shares, samples


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--model", default="bench-fast", help="a bench model (bench/seed.py), or auto"
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=0,
        help="instead of wrk: this many concurrent paced streams (64 x 20 ms), repeated",
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--database-url", default=h.DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    args = parser.parse_args()
    if not PY_SPY.exists():
        print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    run_id = "p" + dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    out_dir = h.ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"[profile] machine {h.machine_info()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mr-profile-") as tmp_name, h.services() as started:
        tmp = Path(tmp_name)
        env = h.production_env(tmp, database_url=args.database_url, redis_url=args.redis_url)
        sim_port = h.free_port()
        started.append(h.simulator_service(sim_port, h.base_env(tmp)).start())
        seeded = h.seed(env, f"http://{h.HOST}:{sim_port}", run_id)
        port = h.free_port()
        gateway = h.gateway_service(port, env, 2, out_dir / f"profile-{run_id}.log").start()
        started.append(gateway)
        url = f"http://{h.HOST}:{port}/v1/chat/completions"
        if args.model == "auto":  # the routing decision on the path: two models to weigh
            script = h.wrk_script(tmp / "gw.lua", "auto", seeded["auto_key"])
        else:
            script = h.wrk_script(tmp / "gw.lua", f"benchsim/{args.model}", seeded["key"])
        h.wrk(url, script, 4, 2)  # warm up
        raws = []
        spies = []
        for pid in gateway.workers():
            raw = out_dir / f"profile-{run_id}-{pid}.txt"
            raws.append(raw)
            spies.append(
                subprocess.Popen(
                    [
                        str(PY_SPY),
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(args.seconds),
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        result: dict = {}

        def streams() -> None:
            from bench.run import Target, streams_at

            target = Target(
                "megarouter", port, seeded["key"], {"stream": "benchsim/bench-stream"}, list
            )
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                row = h.run_async(streams_at(target, args.streams))
                print(f"[profile] {row}", flush=True)

        def requests() -> None:
            result.update(h.wrk(url, script, args.connections, args.seconds + 1))

        load = threading.Thread(target=streams if args.streams else requests)
        cpu_before = sum(cpu_seconds(pid) for pid in gateway.workers())
        load.start()
        for spy in spies:
            spy.wait(args.seconds + 60)
        load.join()
        cpu_used = sum(cpu_seconds(pid) for pid in gateway.workers()) - cpu_before
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    shares: Counter[str] = Counter()
    samples = 0
    for raw in raws:
        if raw.exists():
            text = raw.read_text()
            o, t, n = parse_collapsed(text)
            own.update(o)
            total.update(t)
            shares.update(categorize(text)[0])
            samples += n
    if not args.streams:
        print(
            f"[profile] wrk c={args.connections}: {result.get('rps', 0):.0f} req/s, "
            f"p50 {result.get('p50', 0):.2f} ms, p99 {result.get('p99', 0):.2f} ms"
        )
        if result.get("requests"):
            # CPU time, not wall time: a figure other work on the machine barely moves
            per = 1000 * cpu_used / result["requests"]
            print(f"[profile] workers' CPU: {cpu_used:.2f} s, {per:.3f} ms per request")
    print(f"[profile] {samples} samples on the CPU over {len(raws)} workers")
    if not samples:
        print("[profile] no samples (py-spy needs ptrace: run as root or with CAP_SYS_PTRACE)")
        return 1
    print("\nWhere the workers' CPU goes (bench/profile.py SPECIFIC rules), share of samples:")
    for category, count in shares.most_common():
        print(f"  {100 * count / samples:5.1f}%  {category}")
    print(f"\nTop {args.top} by own samples (the frame itself on the CPU):")
    for frame, count in own.most_common(args.top):
        print(f"  {100 * count / samples:5.1f}%  {frame}")
    print(f"\nTop {args.top} by total samples (the frame anywhere on the stack):")
    for frame, count in total.most_common(args.top):
        print(f"  {100 * count / samples:5.1f}%  {frame}")
    print(f"\n[profile] collapsed stacks: {', '.join(str(r.relative_to(h.ROOT)) for r in raws)}")
    return 0


if __name__ == "__main__":
    sys.exit(main() if os.name == "posix" else 2)
