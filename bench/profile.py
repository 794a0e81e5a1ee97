"""`make profile`: where a gateway worker spends its time under load, with py-spy.

    .venv/bin/python bench/profile.py [--seconds 10] [--connections 32] [--model bench-fast]

Starts the simulator and the gateway in production mode (2 workers, as bench/run.py does),
drives wrk at the given concurrency and, meanwhile, samples every worker with
``py-spy record --format raw`` (collapsed stacks, 250 Hz, idle frames left out). Prints the
functions with the most samples on the CPU: "own" (the frame itself is running) and
"total" (the frame is on the stack), plus the raw stacks path for a flame graph
(``flamegraph.pl`` or speedscope accept it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--model", default="bench-fast")
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
        load.start()
        for spy in spies:
            spy.wait(args.seconds + 60)
        load.join()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for raw in raws:
        if raw.exists():
            o, t, n = parse_collapsed(raw.read_text())
            own.update(o)
            total.update(t)
            samples += n
    if not args.streams:
        print(
            f"[profile] wrk c={args.connections}: {result.get('rps', 0):.0f} req/s, "
            f"p50 {result.get('p50', 0):.2f} ms, p99 {result.get('p99', 0):.2f} ms"
        )
    print(f"[profile] {samples} samples on the CPU over {len(raws)} workers")
    if not samples:
        print("[profile] no samples (py-spy needs ptrace: run as root or with CAP_SYS_PTRACE)")
        return 1
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
