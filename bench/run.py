"""`make bench`: MegaRouter against direct calls and LiteLLM, in one run on the same machine.

    .venv/bin/python bench/run.py [--quick] [--no-litellm] [--no-docs] [--workers 2]
    BENCH_QUICK=1 make bench     # about two minutes
    make bench                   # full mode, about ten minutes

Starts, on 127.0.0.1 ports picked at random:
- the provider simulator (fast mode; the 20 ms upstream and the paced streams are the same
  server with latency knobs in the model name: ``gpt-4o-mini~ttft_ms=20``,
  ``gpt-4o-mini~tokens=64~token_ms=20``);
- MegaRouter in production mode (MEGAROUTER_ENV=production, PostgreSQL ``megarouter_bench``,
  Redis db 9, a SECRET_KEY and Fernet key generated for the run), uvicorn with 2 workers,
  seeded by bench/seed.py: one organization tree, one API key, budgets at the organization,
  member and key layers when the billing app offers them;
- the LiteLLM proxy from bench/litellm-venv (``pip install 'litellm[proxy]'``, not a project
  dependency), same models on the same simulator, same number of workers, no database, master
  key only. Skipped with a note when that virtualenv is missing.

Every figure is measured on all targets in the same loop, interleaved (request by request for
latency, step by step for throughput and streams), so a busy machine slows them alike and the
ratios hold even when the absolute numbers drift. The load average is recorded before and after.

Writes bench/results/bench-<time>.json and the table into docs/performance.md (between the
``bench:results`` markers), and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h
from bench.report import render_table, update_docs

# The LiteLLM releases compared: the pinned one and the newest the registry served (the
# Makefile upgrades that virtualenv before each run). Target name -> its executable.
LITELLMS = {
    "litellm": h.ROOT / "bench" / "litellm-venv" / "bin" / "litellm",
    "litellm-latest": h.ROOT / "bench" / "litellm-latest-venv" / "bin" / "litellm",
}
LITELLM = LITELLMS["litellm"]
# Seconds LiteLLM's uvicorn supervisor waits for a worker's start-up health check: its workers
# import for a long while on a busy 2-core machine, and the default killed them mid-start.
LITELLM_WORKER_HEALTHCHECK_S = 180
# Both gateways log at the same level (MegaRouter: LOG_LEVEL in bench/harness.production_env).
LOG_LEVEL = "WARNING"
LITELLM_KEY = "sk-bench-master"
SIM_KEY = "sk-sim"
MODELS = {
    "fast": ("bench-fast", "gpt-4o-mini"),
    "20ms": ("bench-20ms", "gpt-4o-mini~ttft_ms=20"),
    "ttft": ("bench-ttft", "gpt-4o-mini~tokens=16"),
    "stream": ("bench-stream", "gpt-4o-mini~tokens=64~token_ms=20"),
}
STREAM_EVENTS = 64
STREAM_PACE_MS = 20.0
STALL_MS = 100.0
RAMP_S = 1.0


class Mode:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.latency_n = 300 if quick else 3000
        self.ttft_n = 150 if quick else 1500
        self.warmup = 50 if quick else 200
        self.step_seconds = 3 if quick else 10
        self.ladder = [4, 16, 64, 256] if quick else [1, 4, 8, 16, 32, 64, 128, 256, 512]
        self.streams = [100, 500] if quick else [100, 250, 500, 750, 1000]
        self.stream_timeout_s = 20.0 if quick else 60.0


# ---------------------------------------------------------------- targets


class Target:
    """One server the load goes to, with the model names and key it needs."""

    def __init__(self, name: str, port: int, key: str, models: dict[str, str], pids: Any) -> None:
        self.name = name
        self.port = port
        self.key = key
        self.models = models
        self._pids = pids

    @property
    def url(self) -> str:
        return f"http://{h.HOST}:{self.port}"

    def path(self) -> str:
        return "/openai/v1/chat/completions" if self.name == "direct" else "/v1/chat/completions"

    def connection(self) -> h.Connection:
        return h.Connection(self.port, {"Authorization": f"Bearer {self.key}"})

    def worker_pids(self) -> list[int]:
        return list(self._pids())


def litellm_config(sim_url: str) -> str:
    lines = ["model_list:"]
    for name, upstream in MODELS.values():
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f'      model: "openai/{upstream}"',
            f'      api_base: "{sim_url}/openai/v1"',
            f'      api_key: "{SIM_KEY}"',
        ]
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        "  drop_params: true",
        "general_settings:",
        f'  master_key: "{LITELLM_KEY}"',
    ]
    return "\n".join(lines) + "\n"


def litellm_service(
    port: int,
    config: Path,
    workers: int,
    env: dict[str, str],
    log: Path,
    executable: Path = LITELLM,
    name: str = "litellm",
):
    litellm_env = {
        **env,
        "LITELLM_LOG": LOG_LEVEL,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DISABLE_ADMIN_UI": "True",
    }
    for name in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "DATABASE_URL", "REDIS_URL"):
        litellm_env.pop(name, None)
    return h.Service(
        name,
        [
            str(executable),
            "--config",
            str(config),
            "--host",
            h.HOST,
            "--port",
            str(port),
            "--num_workers",
            str(workers),
            "--timeout_worker_healthcheck",
            str(LITELLM_WORKER_HEALTHCHECK_S),
        ],
        litellm_env,
        port=port,
        log=log,
    )


# ---------------------------------------------------------------- measurements


async def interleaved(
    targets: list[Target], kind: str, n: int, warmup: int, *, stream: bool
) -> dict[str, dict[str, Any]]:
    """c=1 on each target, one request to each in turn (rotating the order), n per target.
    Returns per target the summary of total time (or time to first content for streams)."""
    conns = {t.name: t.connection() for t in targets}
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    errors: dict[str, int] = {t.name: 0 for t in targets}
    try:
        for i in range(warmup + n):
            order = targets[i % len(targets) :] + targets[: i % len(targets)]
            for target in order:
                body = h.chat_body(target.models[kind], stream=stream)
                try:
                    reply = await conns[target.name].post(target.path(), body, stream=stream)
                except (OSError, asyncio.IncompleteReadError):
                    errors[target.name] += 1
                    continue
                if reply.status != 200 or (stream and reply.first_content_ms is None):
                    errors[target.name] += 1
                    continue
                if i >= warmup:
                    value = reply.first_content_ms if stream else reply.elapsed_ms
                    samples[target.name].append(float(value or 0.0))
    finally:
        for conn in conns.values():
            await conn.close()
    return {
        name: {**h.summarize(values), "errors": errors[name]} for name, values in samples.items()
    }


async def streams_at(target: Target, count: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """``count`` concurrent paced streams; gaps between content events beyond pace + 100 ms.
    Streams still running after ``timeout_s`` are cancelled and counted as errors (a 64 x
    20 ms stream takes 1.3 s; a server that needs a minute has failed the step anyway)."""

    async def one(index: int) -> tuple[str, list[float]]:
        # Starts spread evenly over one second: streams in phase would put every stream's
        # event in the same instant, a burst no real traffic makes.
        await asyncio.sleep(index / count * RAMP_S)
        conn = target.connection()
        try:
            reply = await conn.post(
                target.path(),
                h.chat_body(target.models["stream"], stream=True, max_tokens=STREAM_EVENTS),
                stream=True,
            )
        except (OSError, asyncio.IncompleteReadError):
            return "error", []
        finally:
            await conn.close()
        if reply.status != 200:
            return f"http {reply.status}", []
        return "ok", reply.content_times

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    results = [t.result() for t in tasks if t in done] + [("timeout", [])] * len(pending)
    wall = time.perf_counter() - started
    gaps: list[float] = []
    stalled_streams = 0
    complete = 0
    errors: dict[str, int] = {}
    worst = 0.0
    for status, times in results:
        if status != "ok":
            errors[status] = errors.get(status, 0) + 1
            continue
        if len(times) == STREAM_EVENTS:
            complete += 1
        found = h.stalls(times, STREAM_PACE_MS, STALL_MS)
        gaps.extend(found)
        stalled_streams += bool(found)
        for a, b in itertools.pairwise(times):
            worst = max(worst, (b - a) * 1000)
    return {
        "streams": count,
        "complete": complete,
        "errors": errors,
        "stalls": len(gaps),
        "stalled_streams": stalled_streams,
        "max_gap_ms": round(worst, 1),
        "wall_s": round(wall, 2),
    }


class RssSampler(threading.Thread):
    """Peak resident memory per worker of each target while running (every 0.25 s)."""

    def __init__(self, targets: list[Target]) -> None:
        super().__init__(daemon=True)
        self.targets = targets
        self.peak: dict[str, float] = {t.name: 0.0 for t in targets}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            for target in self.targets:
                for pid in target.worker_pids():
                    self.peak[target.name] = max(self.peak[target.name], h.rss_mib(pid))

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.join(2)
        return {k: round(v, 1) for k, v in self.peak.items()}


def idle_rss(targets: list[Target]) -> dict[str, list[float]]:
    return {t.name: [round(h.rss_mib(pid), 1) for pid in t.worker_pids()] for t in targets}


def routing_decision() -> dict[str, Any]:
    script = h.ROOT / "bench" / "routing_decision.py"
    if not script.exists() or not (h.ROOT / "routing" / "complexity").exists():
        return {"skipped": "needs bench/routing_decision.py (complexity / routing-engine merge)"}
    done = subprocess.run(
        [h.PY, str(script), "--iterations", "500"],
        cwd=h.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    return {"output": done.stdout.strip()}


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", h.DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", h.DEFAULT_REDIS_URL)
    )
    parser.add_argument(
        "--render", metavar="JSON", help="only print (and write into the docs) a stored result"
    )
    args = parser.parse_args()
    if args.render:
        table = render_table(orjson.loads(Path(args.render).read_bytes()))
        print(table)
        if not args.no_docs:
            update_docs(h.ROOT / "docs" / "performance.md", table)
        return 0
    mode = Mode(args.quick)
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    results: dict[str, Any] = {
        "run_id": run_id,
        "mode": "quick" if mode.quick else "full",
        "machine": h.machine_info(),
        "workers": args.workers,
        "notes": [],
    }
    print(f"[bench] {results['mode']} mode; machine {results['machine']}", flush=True)
    out_dir = h.ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mr-bench-") as tmp_name, h.services() as started:
        tmp = Path(tmp_name)
        env = h.production_env(tmp, database_url=args.database_url, redis_url=args.redis_url)
        sim_port = h.free_port()
        started.append(h.simulator_service(sim_port, h.base_env(tmp)).start())
        sim_url = f"http://{h.HOST}:{sim_port}"
        seeded = h.seed(env, sim_url, run_id)
        results["budgets"] = seeded["budgets"]
        gw_port = h.free_port()
        gateway = h.gateway_service(gw_port, env, args.workers, out_dir / f"gateway-{run_id}.log")
        started.append(gateway.start())
        sim_target = Target(
            "direct", sim_port, SIM_KEY, {k: v[1] for k, v in MODELS.items()}, lambda: []
        )
        targets = [
            sim_target,
            Target(
                "megarouter",
                gw_port,
                seeded["key"],
                {k: f"benchsim/{v[0]}" for k, v in MODELS.items()},
                gateway.workers,
            ),
        ]
        results["litellm_versions"] = {}
        for ll_name, executable in LITELLMS.items() if not args.no_litellm else ():
            if not executable.exists():
                results["notes"].append(
                    f"{ll_name}: skipped ({executable.parent.parent.name} missing: make bench "
                    "creates it)"
                )
                continue
            config = tmp / f"{ll_name}.yaml"
            config.write_text(litellm_config(sim_url))
            ll_port = h.free_port()
            litellm = litellm_service(
                ll_port,
                config,
                args.workers,
                h.base_env(tmp),
                out_dir / f"{ll_name}-{run_id}.log",
                executable,
                ll_name,
            )
            started.append(litellm.start(timeout=LITELLM_WORKER_HEALTHCHECK_S + 60))
            version = subprocess.run(
                [
                    str(executable.parent / "python"),
                    "-c",
                    "import importlib.metadata as m;print(m.version('litellm'))",
                ],
                capture_output=True,
                text=True,
            ).stdout.strip()
            results["litellm_versions"][ll_name] = version
            targets.append(
                Target(
                    ll_name,
                    ll_port,
                    LITELLM_KEY,
                    {k: v[0] for k, v in MODELS.items()},
                    litellm.workers,
                )
            )
        if args.no_litellm:
            results["notes"].append("LiteLLM: skipped (--no-litellm)")
        names = [t.name for t in targets]
        print(f"[bench] targets up: {names}; warming up", flush=True)
        # Several connections, so every worker has served (and imported what it imports
        # lazily) before anything is measured; one connection would warm one worker only.
        for target in targets:
            script = h.wrk_script(
                tmp / f"warm-{target.name}.lua", target.models["fast"], target.key
            )
            h.wrk(target.url + target.path(), script, 16, 2)
        h.run_async(interleaved(targets, "fast", 20, 20, stream=False))
        results["rss_idle_mib"] = idle_rss(targets)

        print("[bench] latency at c=1 (fast upstream)", flush=True)
        results["latency"] = h.run_async(
            interleaved(targets, "fast", mode.latency_n, mode.warmup, stream=False)
        )
        print("[bench] time to first token at c=1", flush=True)
        results["ttft"] = h.run_async(
            interleaved(targets, "ttft", mode.ttft_n, mode.warmup // 2, stream=True)
        )

        sampler = RssSampler(targets)
        sampler.start()
        print(f"[bench] throughput ladder {mode.ladder} at the 20 ms upstream", flush=True)
        ladder: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for step, connections in enumerate(mode.ladder):
            order = targets[step % len(targets) :] + targets[: step % len(targets)]
            for target in order:
                script = h.wrk_script(tmp / f"{target.name}.lua", target.models["20ms"], target.key)
                row = h.wrk(target.url + target.path(), script, connections, mode.step_seconds)
                ladder[target.name].append(row)
                print(
                    f"  {target.name:10} c={connections:<4} {row['rps']:8.0f} req/s "
                    f"p99 {row.get('p99', 0):8.1f} ms non2xx {row['non2xx']} "
                    f"sockerr {row['socket_errors']}",
                    flush=True,
                )
        results["throughput"] = {
            name: {"steps": steps, "sustained": h.sustained(steps)}
            for name, steps in ladder.items()
        }

        print(f"[bench] concurrent paced streams {mode.streams}", flush=True)
        stream_rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for count in mode.streams:
            for target in targets:
                row = h.run_async(streams_at(target, count, mode.stream_timeout_s))
                stream_rows[target.name].append(row)
                print(f"  {target.name:10} {row}", flush=True)
        results["streams"] = stream_rows
        results["rss_load_peak_mib"] = sampler.stop()
        results["load_after"] = h.load_average()
    results["routing_decision"] = routing_decision()
    path = out_dir / f"bench-{run_id}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    table = render_table(results)
    print(table)
    print(f"[bench] results: {path.relative_to(h.ROOT)}")
    if not args.no_docs:
        update_docs(h.ROOT / "docs" / "performance.md", table)
        print("[bench] table written into docs/performance.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
