"""`make chaos`: reliability scenarios against the real server, each printing pass / fail /
skipped and its figures.

    .venv/bin/python bench/chaos.py [--only NAME ...] [--celery-down-s 20] [--pg-down-s 10]
                                     [--pg-mode blackhole|refuse] [--load-s 8]
    BENCH_QUICK=1 make chaos   # shorter loads; CHAOS_CELERY_DOWN_S=300 for the full 5 minutes

Everything runs on 127.0.0.1 and stops by itself. The gateway runs in production mode with 2
uvicorn workers on:
- its OWN redis-server (a free port, no persistence), never the machine's shared Redis, so the
  Redis scenario can kill and restart it;
- PostgreSQL ``megarouter_bench`` reached through a TCP proxy in this process
  (bench/tcp_proxy.py), so "PostgreSQL unreachable" pauses the proxy, never the server;
- the provider simulator, with fault knobs in the deployments' upstream model names
  (docs/simulator.md; the models are made by bench/seed.py);
- a Celery worker on that Redis (only when billing's usage posting is wired in).

Scenarios (``--only`` takes these names):
- ``kill-worker``: kill -9 one gateway worker under load: only requests in flight on it fail,
  the rest keep being served, uvicorn replaces the worker; every 200 has its usage recorded
  (once billing settles usage; until then that check is reported as skipped).
- ``redis-restart``: kill -9 the gateway's Redis under load and start it again.
- ``pg-unreachable``: PostgreSQL unreachable for ``--pg-down-s`` under load.
- ``celery-down``: Celery worker stopped for ``--celery-down-s`` under load, then started:
  usage events wait and are all posted (needs billing's usage pipeline).
- ``provider-faults``: 500 / 429 / connection reset / hang before the first byte fail over to
  the healthy deployment; cut / stall / malformed streams end with an error event, never a
  silently truncated success; every deployment 503 gives a 503 error object; with the
  routing-engine merged, the breaker skips the broken deployment.
- ``load-spread``: three deployments of one model, weights 1 / 2 / 7: 8,000 requests follow
  the weights (each share within 10 % of its weight's, and Pearson's chi-square goodness of
  fit p >= 0.001); a deployment at
  ``rpm_limit`` 40 beside an unlimited one: exactly 40 of 160 requests in a minute on it,
  across both workers.
- ``failoverbench``: the 16 numbered fault scenarios (S1-S16, listed in docs/failover.md) end to
  end through a second gateway (2 workers) on the shipped defaults: no timeout or breaker
  setting changed. Targets: 16/16 pass; a flapping primary's traffic back within the
  cool-down + 1 s; with the primary hung, the fallback's answer within the TTFT deadline + 1 s.
- ``conversations``: 40 conversations of 6 turns (a 1,600-token system prompt each, ``auto``
  restricted by the request to one model with two equally weighted deployments that keep
  separate prompt caches in the simulator), 4 at a time over both workers, on the gateway
  (cache-aware, the default) and on a second one with ``MEGAROUTER_CACHE_AWARE_ROUTING=false``:
  how many continuing turns stayed on the deployment holding their cache, the cached prompt
  tokens the simulator reported and the spend (the cost headers). Targets: every continuing
  turn stays (across both processes, through Redis), and the spend is lower than without.
- ``key-guessing``: many wrong keys from one address: is it rate limited?
- ``config-propagation``: with both workers idle for longer than the catalog check interval,
  ``manage.py apply_config`` adds a model and its deployment on the simulator; as soon as the
  command returns, 24 requests for it on fresh connections (both workers), 4 at a time, in
  each of 3 rounds. Target: none answers 404 (the change reached every worker before it served
  its next request), and the figures give each round's slowest answer.
- ``failure-counts``: 120 requests that do not succeed (an unknown model, a body that is not
  JSON, a model the key may not use... here: unknown model and bad JSON, 60 each) on fresh
  connections over both workers, then the failed-request counts after the 5 s flush: every
  one counted once, by status and code, across both processes.
- ``logs``: the gateway's log lines (INFO) hold no key, credential, prompt or completion text.

Exit status 1 when a scenario failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h
from bench.tcp_proxy import TcpProxy

SCENARIOS = (
    "kill-worker",
    "redis-restart",
    "pg-unreachable",
    "celery-down",
    "provider-faults",
    "flapping",
    "load-spread",
    "failoverbench",
    "conversations",
    "key-guessing",
    "logs",
    "config-propagation",
    "failure-counts",
)
CANARY = "zebra-canary-" + secrets.token_hex(6)


@dataclass
class Outcome:
    name: str
    status: str = "pass"  # pass | fail | skipped
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.status = "fail"
            self.problems.append(problem)

    def skip(self, why: str) -> Outcome:
        self.status = "skipped"
        self.problems.append(why)
        return self


@dataclass
class Sample:
    started: float
    ended: float
    status: int  # 0 = connection error / reset
    request_id: str
    detail: str = ""


class Load:
    """``concurrency`` keep-alive clients posting non-stream chat requests in a loop until
    stopped; each 200 is matched to its usage row by the ``x-megarouter-usage-id`` header."""

    def __init__(self, port: int, key: str, model: str, concurrency: int) -> None:
        self.port, self.key, self.model, self.concurrency = port, key, model, concurrency
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.t0 = time.perf_counter()

    async def _client(self) -> None:
        conn = h.Connection(self.port, {"Authorization": f"Bearer {self.key}"})
        body = h.chat_body(self.model)
        while not self._stop.is_set():
            rid = uuid.uuid4().hex
            started = time.perf_counter()
            try:
                reply = await asyncio.wait_for(
                    conn.post("/v1/chat/completions", body, headers={"X-Request-ID": rid}), 30
                )
                status, detail = reply.status, ""
                # Usage rows carry the gateway's charge id, returned in this header (the
                # caller's X-Request-ID is only echoed: it is not trusted to be unique).
                rid = reply.headers.get("x-megarouter-usage-id", rid)
                if status != 200:
                    detail = reply.body[:200].decode(errors="replace")
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                status, detail = 0, type(exc).__name__
                await conn.close()
                await asyncio.sleep(0.05)
            self.samples.append(Sample(started, time.perf_counter(), status, rid, detail))
        await conn.close()

    def start(self) -> Load:
        self.t0 = time.perf_counter()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.concurrency)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def ok_ids(self) -> list[str]:
        return [s.request_id for s in self.samples if s.status == 200]

    def summary(self, *, since: float | None = None, until: float | None = None) -> dict:
        chosen = [
            s
            for s in self.samples
            if (since is None or s.started >= since) and (until is None or s.started < until)
        ]
        statuses = Counter(str(s.status) for s in chosen)
        lat = [(s.ended - s.started) * 1000 for s in chosen if s.status == 200]
        return {
            "requests": len(chosen),
            "ok": statuses.get("200", 0),
            "statuses": dict(statuses),
            "p50_ms": round(h.percentile(lat, 50), 2) if lat else None,
            "p99_ms": round(h.percentile(lat, 99), 2) if lat else None,
        }

    def failures_after(self, moment: float) -> list[Sample]:
        return [s for s in self.samples if s.status != 200 and s.started >= moment]


class Stack:
    """The processes under test and their knobs."""

    def __init__(self, tmp: Path, args: argparse.Namespace, started: list[h.Service]) -> None:
        self.tmp, self.args, self.started = tmp, args, started
        self.run_id = "c" + dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
        self.redis_port = h.free_port()
        self.redis: h.Service | None = None
        self.proxy = TcpProxy(("127.0.0.1", 5432))
        self.gateway: h.Service | None = None
        self.worker: h.Service | None = None
        results = h.ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        self.log = results / f"chaos-{self.run_id}-gateway.log"
        self.seeded: dict[str, Any] = {}

    def start_redis(self) -> None:
        self.redis = h.Service(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            h.base_env(self.tmp),
            port=self.redis_port,
        ).start()
        self.started.append(self.redis)

    def env(self, *, through_proxy: bool) -> dict[str, str]:
        port = self.proxy.port if through_proxy else 5432
        env = h.production_env(
            self.tmp,
            database_url=f"postgres://postgres@127.0.0.1:{port}/megarouter_bench",
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            log_level="INFO",
        )
        env.update(
            {
                "ROUTING_TTFT_TIMEOUT_S": "2",
                "ROUTING_STALL_TIMEOUT_S": "1",
                "PROVIDER_CONNECT_TIMEOUT": "2",
                # A non-streaming call gets its headers with the whole answer, so only the
                # attempt timeout bounds a hung provider there (120 s by default).
                "ROUTING_ATTEMPT_TIMEOUT_S": "4",
            }
        )
        return env

    def up(self) -> None:
        self.start_redis()
        self.proxy.start()
        sim_port = h.free_port()
        self.started.append(h.simulator_service(sim_port, h.base_env(self.tmp)).start())
        env = self.env(through_proxy=True)
        # Same secrets for the seeding and the server (keys are HMAC'd with SECRET_KEY).
        self.seeded = h.seed(env, f"http://127.0.0.1:{sim_port}", self.run_id)
        self.port = h.free_port()
        self.gateway = h.gateway_service(self.port, env, 2, self.log).start()
        self.started.append(self.gateway)
        self.server_env = env
        self.worker = self.celery_worker().start()
        self.started.append(self.worker)

    def celery_worker(self) -> h.Service:
        return h.celery_service(self.server_env, self.tmp / "celery.log")

    @property
    def key(self) -> str:
        return str(self.seeded["key"])

    def usage(self) -> dict[str, Any]:
        import subprocess

        done = subprocess.run(
            [
                h.PY,
                str(h.ROOT / "bench" / "seed.py"),
                "--usage",
                str(self.seeded["organization_id"]),
            ],
            cwd=h.ROOT,
            env=self.env(through_proxy=False),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return orjson.loads(done.stdout.strip().splitlines()[-1])


def usage_check(stack: Stack, outcome: Outcome, ok_ids: list[str], *, wait_s: float = 30) -> None:
    """Every request that got a 200 has exactly one usage row (event or record)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = stack.usage()
        rows = Counter(found["records"] + found["events"])
        missing = [rid for rid in ok_ids if rows.get(rid, 0) == 0]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    doubled = [rid for rid, n in rows.items() if n > 1]
    outcome.figures["usage"] = {"ok_responses": len(ok_ids), "missing": len(missing)}
    outcome.check(not missing, f"{len(missing)} requests answered 200 have no usage row")
    outcome.check(not doubled, f"{len(doubled)} requests have more than one usage row")


async def wait_until(predicate: Any, timeout: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if predicate():
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    return None


# ---------------------------------------------------------------- scenarios


async def kill_worker(stack: Stack) -> Outcome:
    out = Outcome("kill-worker")
    assert stack.gateway is not None
    before = stack.gateway.workers()
    load = Load(stack.port, stack.key, "benchsim/bench-fast", stack.args.concurrency).start()
    await asyncio.sleep(stack.args.load_s / 3)
    victim = before[0]
    killed_at = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    replaced = await wait_until(
        lambda: len([p for p in stack.gateway.workers() if p != victim]) >= len(before), 20
    )
    await asyncio.sleep(stack.args.load_s * 2 / 3)
    await load.stop()
    failed = [s for s in load.samples if s.status != 200]
    late = load.failures_after(killed_at + 1.0)
    out.figures = {
        "workers_before": len(before),
        "worker_replaced_after_s": round(replaced, 2) if replaced is not None else None,
        "load": load.summary(),
        "failed": len(failed),
        "failed_kinds": dict(Counter(s.detail or str(s.status) for s in failed)),
        "failures_later_than_1s_after_kill": len(late),
    }
    out.check(len(failed) <= stack.args.concurrency, "more failures than requests in flight")
    out.check(not late, "requests kept failing more than 1 s after the kill")
    out.check(replaced is not None, "the killed worker was not replaced within 20 s")
    usage_check(stack, out, load.ok_ids())
    return out


async def redis_restart(stack: Stack) -> Outcome:
    out = Outcome("redis-restart")
    assert stack.redis is not None
    load = Load(stack.port, stack.key, "benchsim/bench-fast", stack.args.concurrency).start()
    await asyncio.sleep(stack.args.load_s / 3)
    down_at = time.perf_counter()
    stack.redis.stop(grace=0)  # SIGTERM then SIGKILL of its group: no save (--save "")
    await asyncio.sleep(3)
    stack.start_redis()
    up_at = time.perf_counter()
    await asyncio.sleep(stack.args.load_s)
    await load.stop()
    late = load.failures_after(up_at + 2.0)
    out.figures = {
        "before": load.summary(until=down_at),
        "redis_down_3s": load.summary(since=down_at, until=up_at),
        "after": load.summary(since=up_at),
        "failures_later_than_2s_after_restart": len(late),
    }
    out.check(not late, "requests still failing 2 s after Redis came back")
    # Refusing while Redis is gone can be a policy (503 with the error object); a 500 is an
    # unhandled error.
    unhandled = [s for s in load.samples if s.status == 500]
    out.figures["500_unhandled"] = len(unhandled)
    out.check(
        not unhandled, f"{len(unhandled)} requests got a 500 (unhandled) while Redis was down"
    )
    usage_check(stack, out, load.ok_ids())
    return out


async def pg_unreachable(stack: Stack) -> Outcome:
    out = Outcome("pg-unreachable")
    load = Load(stack.port, stack.key, "benchsim/bench-fast", stack.args.concurrency).start()
    await asyncio.sleep(2)
    down_at = time.perf_counter()
    stack.proxy.pause(mode=stack.args.pg_mode)
    await asyncio.sleep(stack.args.pg_down_s)
    stack.proxy.resume()
    up_at = time.perf_counter()
    await asyncio.sleep(max(4.0, stack.args.load_s / 2))
    await load.stop()
    late = load.failures_after(up_at + 2.0)
    out.figures = {
        "mode": stack.args.pg_mode,
        "down_s": stack.args.pg_down_s,
        "before": load.summary(until=down_at),
        "during": load.summary(since=down_at, until=up_at),
        "after": load.summary(since=up_at),
        "failures_later_than_2s_after_recovery": len(late),
    }
    out.check(not late, "requests still failing 2 s after PostgreSQL came back")
    during = out.figures["during"]
    out.check(during["requests"] > 0, "no request completed while PostgreSQL was unreachable")
    usage_check(stack, out, load.ok_ids(), wait_s=60)
    return out


async def celery_down(stack: Stack) -> Outcome:
    out = Outcome("celery-down")
    if stack.worker is None:
        return out.skip("skipped: no Celery worker in this stack")
    stack.worker.stop()
    load = Load(stack.port, stack.key, "benchsim/bench-fast", 4).start()
    await asyncio.sleep(stack.args.celery_down_s)
    await load.stop()
    pending = stack.usage()
    stack.worker = stack.celery_worker().start()
    stack.started.append(stack.worker)
    out.figures = {
        "down_s": stack.args.celery_down_s,
        "load": load.summary(),
        "events_pending_while_down": len(pending["events"]),
    }
    usage_check(stack, out, load.ok_ids(), wait_s=120)
    return out


async def _call(
    stack: Stack, model: str, *, stream: bool = False, headers: dict[str, str] | None = None
) -> h.Reply:
    conn = h.Connection(stack.port, {"Authorization": f"Bearer {stack.key}", **(headers or {})})
    try:
        return await asyncio.wait_for(
            conn.post("/v1/chat/completions", h.chat_body(model, stream=stream), stream=stream),
            30,
        )
    finally:
        await conn.close()


async def provider_faults(stack: Stack) -> Outcome:
    out = Outcome("provider-faults")
    # The breaker opens after ROUTING_BREAKER_FAILURES consecutive failures (the server's
    # setting, default 5); two workers share that state through Redis, each refreshing its
    # view every 0.25 s, so allow two more requests before the skipping must show.
    threshold = int(stack.server_env.get("ROUTING_BREAKER_FAILURES", "5"))
    rounds = threshold + 6
    for fault in ("500", "429", "reset", "hang", "cut", "malformed"):
        replies = [await _call(stack, f"benchsim/chaos-{fault}") for _ in range(rounds)]
        statuses = Counter(str(r.status) for r in replies)
        attempts = Counter(r.headers.get("x-megarouter-attempts", "?") for r in replies)
        times = [r.elapsed_ms for r in replies]
        out.figures[f"{fault} (non-stream)"] = {
            "statuses": dict(statuses),
            "attempts": dict(attempts),
            "first_ms": round(times[0], 1),
            "p50_ms": round(h.percentile(times, 50), 1),
        }
        out.check(statuses == {"200": rounds}, f"{fault}: not every request failed over to 200")
        out.check(
            attempts.get("1", 0) >= rounds - threshold - 2,
            f"{fault}: the breaker did not start skipping the broken deployment",
        )
    for fault in ("cut", "stall", "malformed"):
        verdicts: Counter[str] = Counter()
        for _ in range(3):
            reply = await _call(stack, f"benchsim/chaos-{fault}", stream=True)
            body = reply.body
            if reply.status != 200:
                verdicts[f"http {reply.status}"] += 1
            elif b"[DONE]" in body and b'"error"' not in body:
                verdicts["complete" if len(reply.content_times) == 16 else "TRUNCATED"] += 1
            elif b'"error"' in body and b"[DONE]" not in body:
                verdicts["error event"] += 1
            else:
                verdicts["TRUNCATED"] += 1
        out.figures[f"{fault} (stream, after 3 events)"] = dict(verdicts)
        out.check(not verdicts.get("TRUNCATED"), f"{fault}: a stream ended as a silent success")
    reply = await _call(stack, "benchsim/chaos-all503")
    error = orjson.loads(reply.body).get("error", {}) if reply.body.startswith(b"{") else {}
    out.figures["all deployments 503"] = {"status": reply.status, "code": error.get("code")}
    out.check(reply.status == 503, "every deployment 503 did not give a 503")
    out.check(error.get("code") == "all_deployments_failed", "503 without the error object")
    return out


async def flapping(stack: Stack) -> Outcome:
    """A primary that answers 503 for ``FLAP_S`` seconds, then recovers, under one request
    every 50 ms on the default breaker settings: every request is served, and traffic is back
    on the primary within the cool-down + 1 s of its recovery (live traffic makes the
    half-open trial; this stack runs no probes)."""
    from bench.seed import FLAP_BACKUP_TOKENS, FLAP_S

    out = Outcome("flapping")
    cooldown = float(stack.server_env.get("ROUTING_BREAKER_COOLDOWN_S", "10"))
    started = time.monotonic()
    served: list[tuple[float, int, str]] = []  # (seconds since start, status, which)
    while time.monotonic() - started < FLAP_S + cooldown + 4:
        reply = await _call(stack, "benchsim/chaos-flap")
        which = "?"
        if reply.status == 200:
            tokens = orjson.loads(reply.body)["usage"]["completion_tokens"]
            which = "backup" if tokens == FLAP_BACKUP_TOKENS else "primary"
        served.append((time.monotonic() - started, reply.status, which))
        await asyncio.sleep(0.05)
    statuses = Counter(str(status) for _, status, _ in served)
    # the fault window began with the first request, which the primary received
    back = next((t for t, _, which in served if which == "primary" and t >= FLAP_S), None)
    moved = next((t for t, _, which in served if which == "backup"), None)
    out.figures["requests"] = {"sent": len(served), "statuses": dict(statuses)}
    out.figures["first answer from the backup (s)"] = round(moved, 2) if moved else None
    out.figures["primary recovered at (s)"] = FLAP_S
    out.figures["traffic back on the primary (s after recovery)"] = (
        round(back - FLAP_S, 2) if back is not None else None
    )
    out.figures["cool-down (s)"] = cooldown
    out.check(statuses == {"200": len(served)}, "not every request was served")
    out.check(back is not None, "traffic never returned to the recovered primary")
    if back is not None:
        out.check(back - FLAP_S <= cooldown + 1, "traffic returned later than cool-down + 1 s")
    return out


async def _served_by(stack: Stack, model: str, count: int, concurrency: int) -> Counter[str]:
    """``count`` requests to ``model``, ``concurrency`` at a time, spread by the kernel over
    both gateway workers: the answers' completion tokens (who served each), or the status."""
    seen: Counter[str] = Counter()
    queue = iter(range(count))

    async def client() -> None:
        conn = h.Connection(stack.port, {"Authorization": f"Bearer {stack.key}"})
        try:
            for _ in queue:
                reply = await asyncio.wait_for(
                    conn.post("/v1/chat/completions", h.chat_body(model)), 30
                )
                if reply.status == 200:
                    seen[str(orjson.loads(reply.body)["usage"]["completion_tokens"])] += 1
                else:
                    seen[f"http {reply.status}"] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return seen


async def load_spread(stack: Stack) -> Outcome:
    """Three deployments of one model, weights 1 / 2 / 7, under 8 concurrent clients over
    the 2 workers: every share within 10 % of its weight's (on 8,000 draws 10 % of the 0.1
    share is 3 standard errors, so a fair spread misses it about once in 400 runs) and a
    chi-square test of the whole spread against the weights (p >= 0.001).
    Then a deployment limited to SPREAD_RPM requests a minute (weight 9) beside an unlimited
    one, 4 x that many requests inside a minute: the limited one serves exactly SPREAD_RPM
    (never more, across both processes), the rest go to the other, all answered."""
    from bench.seed import SPREAD, SPREAD_RPM

    out = Outcome("load-spread")
    total = 8000
    seen = await _served_by(stack, "benchsim/chaos-spread", total, 8)
    weights = sum(SPREAD)
    shares = {}
    chi2 = 0.0
    for weight, tokens in SPREAD.items():
        expected = total * weight / weights
        served = seen.get(str(tokens), 0)
        chi2 += (served - expected) ** 2 / expected
        deviation = abs(served - expected) / expected
        shares[f"weight {weight}"] = {
            "share": round(served / total, 4),
            "expected": weight / weights,
            "relative deviation": round(deviation, 4),
        }
        out.check(
            deviation <= 0.10,
            f"weight {weight}: share {served / total:.3f} is not within 10 % of "
            f"{weight / weights:.3f}",
        )
    # Pearson's goodness of fit, 2 degrees of freedom (three deployments): P(X >= x) = e^(-x/2)
    p_value = math.exp(-chi2 / 2)
    shares["chi-square"] = {"statistic": round(chi2, 2), "p": round(p_value, 4)}
    out.check(
        p_value >= 0.001,
        f"the shares do not follow the weights (chi-square {chi2:.1f}, p = {p_value:.2g})",
    )
    out.figures["spread over 3 deployments (8,000 requests)"] = shares
    out.check(sum(seen.values()) == total and not any(k.startswith("http") for k in seen),
              "not every spread request was answered")  # fmt: skip
    started = time.monotonic()
    seen = await _served_by(stack, "benchsim/chaos-rpm", 4 * SPREAD_RPM, 8)
    elapsed = time.monotonic() - started
    out.figures["rpm limit"] = {
        "rpm_limit": SPREAD_RPM,
        "requests": 4 * SPREAD_RPM,
        "seconds": round(elapsed, 2),
        "served by the limited deployment": seen.get("5", 0),
        "served by the other": seen.get("6", 0),
        "other": {k: v for k, v in seen.items() if k not in ("5", "6")},
    }
    out.check(elapsed < 60, "the RPM check took longer than its window")
    out.check(seen.get("5", 0) <= SPREAD_RPM, "the RPM limit was exceeded across the workers")
    out.check(seen.get("5", 0) == SPREAD_RPM, "the limited deployment was not used up to it")
    out.check(seen.get("6", 0) == 3 * SPREAD_RPM, "not every request beyond it was served")
    return out


# Settings bench/chaos.py shortens for its own stack; failoverbench runs without them.
SHORTENED = ("ROUTING_TTFT_TIMEOUT_S", "ROUTING_STALL_TIMEOUT_S", "PROVIDER_CONNECT_TIMEOUT",
             "ROUTING_ATTEMPT_TIMEOUT_S")  # fmt: skip
DEFAULT_TTFT_S = 20.0  # megarouter/settings.py ROUTING_TTFT_TIMEOUT_S
DEFAULT_COOLDOWN_S = 10.0  # ROUTING_BREAKER_COOLDOWN_S


CONV_COUNT, CONV_TURNS = 40, 6


async def _conversations(port: int, key: str, tag: str) -> dict[str, Any]:
    """CONV_COUNT conversations of CONV_TURNS turns, 4 at a time: per continuing turn whether
    it stayed on the previous turn's deployment (told apart by the answer's length), the cached
    tokens the provider reported, the spend from the cost headers."""
    from bench.seed import CACHE_PAIR

    lengths = {tokens for _, tokens in CACHE_PAIR}
    stayed = switched = cached_turns = errors = 0
    cached_tokens = prompt_tokens = 0
    spend = Decimal(0)
    queue = iter(range(CONV_COUNT))

    async def client() -> None:
        nonlocal stayed, switched, cached_turns, errors, cached_tokens, prompt_tokens, spend
        conn = h.Connection(port, {"Authorization": f"Bearer {key}"})
        try:
            for n in queue:
                system = f"Conversation {tag}-{n}. " + "Answer about the ledger, exactly. " * 230
                messages: list[dict[str, Any]] = [
                    {"role": "system", "content": system},
                    {"role": "user", "content": "What is an append-only ledger?"},
                ]
                previous = None
                for i in range(CONV_TURNS):
                    body = {
                        "model": "auto",
                        "messages": messages,
                        "megarouter": {"allowed_models": ["benchsim/chaos-cache"]},
                    }
                    reply = await asyncio.wait_for(
                        conn.post("/v1/chat/completions", orjson.dumps(body)), 30
                    )
                    if reply.status != 200:
                        errors += 1
                        break
                    answer = orjson.loads(reply.body)
                    usage = answer["usage"]
                    served = usage["completion_tokens"]
                    assert served in lengths, usage
                    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                    spend += Decimal(reply.headers["x-megarouter-cost-usd"])
                    prompt_tokens += usage["prompt_tokens"]
                    if i:
                        stayed += served == previous
                        switched += served != previous
                        cached_turns += cached > 0
                        cached_tokens += cached
                    previous = served
                    messages += [
                        {
                            "role": "assistant",
                            "content": answer["choices"][0]["message"]["content"],
                        },
                        {"role": "user", "content": f"And what about case {i + 2}?"},
                    ]
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(4)))
    continuing = stayed + switched
    return {
        "continuing turns": continuing,
        "stayed on the cache's deployment": stayed,
        "switched": switched,
        "turns with cached tokens": cached_turns,
        "cached / prompt tokens": f"{cached_tokens:,} / {prompt_tokens:,}",
        "spend usd": str(spend),
        "errors": errors,
    }


async def conversations(stack: Stack) -> Outcome:
    """Cache-aware routing on and off, the same conversations (see the module docstring)."""
    out = Outcome("conversations")
    aware = await _conversations(stack.port, stack.key, "aware")
    env = {**stack.server_env, "MEGAROUTER_CACHE_AWARE_ROUTING": "false"}
    port = h.free_port()
    log = stack.log.with_name(stack.log.name.replace("-gateway", "-nocache-gateway"))
    gateway = h.gateway_service(port, env, 2, log).start()
    stack.started.append(gateway)
    try:
        blind = await _conversations(port, stack.key, "blind")
    finally:
        gateway.stop()
    out.figures["cache-aware (default)"] = aware
    out.figures["MEGAROUTER_CACHE_AWARE_ROUTING=false"] = blind
    saving = 1 - Decimal(aware["spend usd"]) / Decimal(blind["spend usd"])
    out.figures["spend saved by staying"] = f"{saving:.1%}"
    out.check(aware["errors"] == blind["errors"] == 0, "a conversation turn failed")
    out.check(
        aware["stayed on the cache's deployment"]
        == aware["continuing turns"]
        == CONV_COUNT * (CONV_TURNS - 1),
        "a continuing turn left the deployment holding its cache",
    )
    out.check(
        aware["turns with cached tokens"] == aware["continuing turns"],
        "a continuing turn found no cached prompt",
    )
    out.check(saving > 0, "staying on the cache did not lower the spend")
    return out


def _verdict(reply: h.Reply) -> str:
    """How a stream ended: complete, an error event without [DONE], or truncated."""
    if reply.status != 200:
        return f"http {reply.status}"
    done, error = b"[DONE]" in reply.body, b'"error"' in reply.body
    if done and not error:
        return "complete"
    return "error event" if error and not done else "TRUNCATED"


async def failoverbench(stack: Stack) -> Outcome:
    """S1-S16 on the defaults: each scenario's model (bench/seed.py FAILOVERBENCH) called
    through a gateway whose environment sets no timeout, retry or breaker knob."""
    from bench.seed import BACKUP_TOKENS, FALLBACK_TOKENS, FB_FLAP_S, PRIMARY_TOKENS

    out = Outcome("failoverbench")
    env = {k: v for k, v in stack.server_env.items() if k not in SHORTENED}
    port = h.free_port()
    log = stack.log.with_name(stack.log.name.replace("-gateway", "-defaults-gateway"))
    gateway = h.gateway_service(port, env, 2, log).start()
    stack.started.append(gateway)
    auth = {"Authorization": f"Bearer {stack.key}"}
    results: dict[str, tuple[bool, str]] = {}

    async def post(body: dict[str, Any], *, stream: bool = False) -> h.Reply:
        conn = h.Connection(port, auth)
        try:
            return await asyncio.wait_for(
                conn.post("/v1/chat/completions", orjson.dumps(body), stream=stream), 200
            )
        finally:
            await conn.close()

    def body(model: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
        messages = [{"role": "user", "content": "Say hello in five words"}]
        return {"model": f"benchsim/{model}", "max_tokens": 16, "messages": messages,
                "stream": stream, **extra}  # fmt: skip

    def tokens(reply: h.Reply) -> int | None:
        return (
            orjson.loads(reply.body)["usage"]["completion_tokens"] if reply.status == 200 else None
        )

    def scenario(number: int, name: str, ok: bool, figure: str) -> None:
        results[f"S{number} {name}"] = (ok, figure)

    # S1 500 once: the answer comes (from the backup, or the primary on its retry)
    r = await post(body("fb-s1"))
    scenario(1, "500 once", r.status == 200, f"{r.status}, {r.elapsed_ms:.0f} ms")
    # S2 persistent 503: every request served by the backup; the breaker then skips the primary
    replies = [await post(body("fb-s2")) for _ in range(10)]
    served = sum(1 for x in replies if tokens(x) == BACKUP_TOKENS)
    calls = [x.headers.get("x-megarouter-attempts") for x in replies]
    scenario(2, "persistent 503 + breaker", served == 10 and calls[-1] == "1",
             f"{served}/10 by the backup; attempts {','.join(map(str, calls))}")  # fmt: skip
    # S3 429 with Retry-After 1 s: the backup answers at once, nothing waited
    r = await post(body("fb-s3"))
    ok = tokens(r) == BACKUP_TOKENS and r.elapsed_ms < 1000
    scenario(3, "429 with Retry-After", ok, f"{r.status}, {r.elapsed_ms:.0f} ms")
    # S4 persistent 429 everywhere (Retry-After 30 s): the client gets a 429 with Retry-After
    r = await post(body("fb-s4"))
    ok = r.status == 429 and "retry-after" in r.headers
    scenario(4, "persistent 429", ok, f"{r.status}, retry-after {r.headers.get('retry-after')}")
    # S5 connection reset before headers
    r = await post(body("fb-s5"))
    scenario(
        5, "reset before headers", tokens(r) == BACKUP_TOKENS, f"{r.status}, {r.elapsed_ms:.0f} ms"
    )
    # S6 hung primary, non-streaming: the backup's answer, and how long it took
    r = await post(body("fb-s6"))
    hang_ms = r.elapsed_ms
    scenario(
        6, "hung primary (non-stream)", tokens(r) == BACKUP_TOKENS, f"{r.status}, {hang_ms:.0f} ms"
    )
    # S7 slow first token (40 s) and S8 stall before the first content (only the role chunk)
    for number, name, model in ((7, "slow first token", "fb-s7"),
                                (8, "stall before first content", "fb-s8")):  # fmt: skip
        r = await post(body(model, stream=True), stream=True)
        first = r.first_content_ms or 0
        ok = _verdict(r) == "complete" and len(r.content_times) == BACKUP_TOKENS
        ok = ok and first <= (DEFAULT_TTFT_S + 1) * 1000
        scenario(number, name, ok, f"{_verdict(r)}, first content at {first:.0f} ms")
    # S9 stream cut after 3 events: no failover once content went out, an error event
    r = await post(body("fb-s9", stream=True), stream=True)
    scenario(9, "stream cut", _verdict(r) == "error event", _verdict(r))
    # S10 malformed SSE before content: failover, the backup's complete stream
    r = await post(body("fb-s10", stream=True), stream=True)
    ok = _verdict(r) == "complete" and len(r.content_times) == BACKUP_TOKENS
    scenario(10, "malformed SSE", ok, f"{_verdict(r)}, {len(r.content_times)} events")
    # S11 missing [DONE]: never a silent success
    r = await post(body("fb-s11", stream=True), stream=True)
    scenario(11, "missing [DONE]", _verdict(r) == "error event", _verdict(r))
    # S12 context length: the provider's context error moves to the larger-context fallback
    r = await post(body("fb-s12", megarouter={"fallbacks": ["benchsim/fb-s12-large"]}))
    scenario(12, "context length", tokens(r) == FALLBACK_TOKENS,
             f"{r.status}, model {r.headers.get('x-megarouter-model')}")  # fmt: skip
    # S13 content filter: an answer with finish_reason content_filter, no failover
    r = await post(body("fb-s13"))
    finish = orjson.loads(r.body)["choices"][0]["finish_reason"] if r.status == 200 else None
    ok = finish == "content_filter" and r.headers.get("x-megarouter-attempts") == "1"
    scenario(13, "content filter", ok, f"{r.status}, finish_reason {finish}")
    # S14 the fallback rejects an assistant prefill: the next model answers
    prefill = body("fb-s14", megarouter={"fallbacks": ["benchsim/fb-s14-noprefill",
                                                       "benchsim/fb-s14-last"]})  # fmt: skip
    prefill["messages"].append({"role": "assistant", "content": "Hello"})
    r = await post(prefill)
    scenario(14, "fallback rejects a prefill", tokens(r) == FALLBACK_TOKENS,
             f"{r.status}, model {r.headers.get('x-megarouter-model')}")  # fmt: skip
    # S15 flapping primary (503 for FB_FLAP_S s): all served, back within the cool-down + 1 s
    started = time.monotonic()
    flap: list[tuple[float, int, int | None]] = []
    while time.monotonic() - started < FB_FLAP_S + DEFAULT_COOLDOWN_S + 4:
        r = await post(body("fb-s15"))
        flap.append((time.monotonic() - started, r.status, tokens(r)))
        await asyncio.sleep(0.1)
    back = next((t for t, _, n in flap if n == PRIMARY_TOKENS and t >= FB_FLAP_S), None)
    recovery = None if back is None else back - FB_FLAP_S
    ok = all(status == 200 for _, status, _ in flap) and recovery is not None
    ok = ok and recovery <= DEFAULT_COOLDOWN_S + 1
    back_s = None if recovery is None else round(recovery, 2)
    answered = sum(1 for _, status, _ in flap if status == 200)
    figure = f"{answered}/{len(flap)} served, back on the primary {back_s} s after it recovered"
    scenario(15, "primary flapping", ok, figure)
    # S16 fallback accounting: the usage record names the backup and costs the header's amount
    r = await post(body("fb-s16"))
    usage_id, cost = r.headers.get("x-megarouter-usage-id"), r.headers.get("x-megarouter-cost-usd")
    record = None
    for _ in range(60):
        record = stack.usage()["costs"].get(usage_id)
        if record:
            break
        await asyncio.sleep(0.5)
    ok = record is not None and record[1] == "benchsim-fb-s16-1"
    ok = ok and cost is not None and Decimal(record[0]) == Decimal(cost)
    scenario(16, "fallback accounting", ok, f"header {cost}, record {record}")

    for name, (ok, figure) in results.items():
        out.figures[name] = ("pass: " if ok else "FAIL: ") + figure
        out.check(ok, f"{name} failed")
    passed = sum(1 for ok, _ in results.values() if ok)
    out.figures["passed"] = f"{passed}/{len(results)}"
    out.figures["hung primary: fallback answer (s)"] = round(hang_ms / 1000, 2)
    out.check(
        hang_ms <= (DEFAULT_TTFT_S + 1) * 1000,
        f"hung primary: the fallback answered after {hang_ms / 1000:.1f} s, not within the "
        f"TTFT deadline + 1 s ({DEFAULT_TTFT_S + 1:.0f} s)",
    )
    return out


async def key_guessing(stack: Stack) -> Outcome:
    out = Outcome("key-guessing")
    conn = h.Connection(stack.port)
    statuses: Counter[int] = Counter()
    started = time.perf_counter()
    for _ in range(stack.args.guesses):
        guess = f"mrk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
        reply = await conn.post(
            "/v1/chat/completions",
            h.chat_body("benchsim/bench-fast"),
            headers={"Authorization": f"Bearer {guess}"},
        )
        statuses[reply.status] += 1
    await conn.close()
    elapsed = time.perf_counter() - started
    out.figures = {
        "guesses": stack.args.guesses,
        "statuses": {str(k): v for k, v in statuses.items()},
        "guesses_per_s": round(stack.args.guesses / elapsed),
    }
    out.check(
        statuses.get(429, 0) > 0,
        "no per-address limit on failed key attempts: every guess got a 401 "
        "(gateway gap, reported, not fixed here)",
    )
    return out


async def logs(stack: Stack) -> Outcome:
    out = Outcome("logs")
    body = orjson.dumps(
        {
            "model": "benchsim/bench-fast",
            "messages": [{"role": "user", "content": f"Repeat this: {CANARY}"}],
        }
    )
    conn = h.Connection(stack.port, {"Authorization": f"Bearer {stack.key}"})
    answer = await conn.post("/v1/chat/completions", body)
    bad = await conn.post("/v1/chat/completions", body[:-5])  # invalid JSON carrying the canary
    faulty = await conn.post("/v1/chat/completions", body.replace(b"bench-fast", b"chaos-all503"))
    await conn.close()
    completion = ""
    with contextlib.suppress(Exception):
        completion = orjson.loads(answer.body)["choices"][0]["message"]["content"]
    await asyncio.sleep(1.0)  # let the workers flush their log lines
    text = stack.log.read_text(errors="replace")
    secret_part = stack.key.split("_")[-1]
    needles = {
        "prompt canary": CANARY,
        "API key": stack.key,
        "API key secret part": secret_part,
        "provider credential": stack.seeded["credential_secret"],
    }
    if completion and len(completion) > 20:
        needles["completion text"] = completion
    found = [name for name, needle in needles.items() if needle and needle in text]
    out.figures = {
        "log_lines": text.count("\n"),
        "statuses": [answer.status, bad.status, faulty.status],
        "searched_for": sorted(needles),
        "found": found,
    }
    out.check(answer.status == 200, "the canary request failed")
    out.check(not found, f"found in the gateway log: {', '.join(found)}")
    out.check(text.count("\n") > 0, "the gateway wrote no log line at INFO")
    return out


CONFIG_TOML = """
version = 1

[[credentials]]
name = "chaos-new"
api_key = "sk-chaos-new"

[[models]]
id = "benchsim/{name}"
mode = "chat"
context_window = 128000
price = {{ input_per_token = "0.000001", output_per_token = "0.000002" }}

[[deployments]]
name = "chaos-{name}"
model = "benchsim/{name}"
credential = "chaos-new"
base_url = "{base}"
provider_model_name = "gpt-4o-mini"
"""


async def _fresh_post(port: int, key: str, model: str) -> h.Reply:
    conn = h.Connection(port, {"Authorization": f"Bearer {key}"})
    try:
        return await asyncio.wait_for(conn.post("/v1/chat/completions", h.chat_body(model)), 30)
    finally:
        await conn.close()


async def config_propagation(stack: Stack) -> Outcome:
    import subprocess

    out = Outcome("config-propagation")
    base = str(stack.seeded.get("simulator_base") or "")
    if not base:
        return out.skip("the seed does not say the simulator's base URL")
    rounds: list[dict[str, Any]] = []
    for index in range(3):
        await asyncio.sleep(5)  # both workers idle past the 1 s check interval
        name = f"chaos-new-{stack.run_id}-{index}"
        path = stack.tmp / f"{name}.toml"
        path.write_text(CONFIG_TOML.format(name=name, base=base))
        started = time.perf_counter()
        subprocess.run(
            [h.PY, "manage.py", "apply_config", str(path)],
            cwd=h.ROOT,
            env=stack.env(through_proxy=False),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        applied = time.perf_counter()
        statuses: Counter[str] = Counter()
        slowest = 0.0
        for _ in range(6):  # 24 requests, 4 at a time, each on a new connection
            replies = await asyncio.gather(
                *(_fresh_post(stack.port, stack.key, f"benchsim/{name}") for _ in range(4))
            )
            for reply in replies:
                statuses[str(reply.status)] += 1
                slowest = max(slowest, reply.elapsed_ms)
        rounds.append(
            {
                "apply_config_s": round(applied - started, 2),
                "statuses": dict(statuses),
                "slowest_ms": round(slowest, 1),
            }
        )
    out.figures = {"rounds": rounds}
    not_found = sum(r["statuses"].get("404", 0) for r in rounds)
    others = sum(
        n for r in rounds for code, n in r["statuses"].items() if code not in ("200", "404")
    )
    out.check(not_found == 0, f"{not_found} requests for the new model answered 404")
    out.check(others == 0, f"{others} requests answered neither 200 nor 404")
    return out


async def failure_counts(stack: Stack) -> Outcome:
    import subprocess

    out = Outcome("failure-counts")

    def counts() -> dict[str, int]:
        done = subprocess.run(
            [
                h.PY,
                str(h.ROOT / "bench" / "seed.py"),
                "--failures",
                str(stack.seeded["organization_id"]),
            ],
            cwd=h.ROOT,
            env=stack.env(through_proxy=False),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return orjson.loads(done.stdout.strip().splitlines()[-1])

    before = counts()

    async def refused(bad_json: bool) -> int:
        conn = h.Connection(stack.port, {"Authorization": f"Bearer {stack.key}"})
        try:
            body = b"{not json" if bad_json else h.chat_body("benchsim/no-such-model")
            reply = await asyncio.wait_for(conn.post("/v1/chat/completions", body), 30)
            return reply.status
        finally:
            await conn.close()

    statuses: Counter[int] = Counter()
    for _ in range(15):  # 120 requests, 8 at a time, each on a new connection
        got = await asyncio.gather(*(refused(i % 2 == 0) for i in range(8)))
        statuses.update(got)
    await asyncio.sleep(6.5)  # each worker writes its counts every 5 s
    after = counts()
    added = {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
    out.figures = {"answered": {str(k): v for k, v in statuses.items()}, "counted": added}
    out.check(statuses == Counter({400: 60, 404: 60}), f"unexpected answers {dict(statuses)}")
    out.check(
        added == {"400 invalid_json": 60, "404 model_not_found": 60},
        f"counted {added}, expected 60 of each",
    )
    return out


RUNNERS = {
    "kill-worker": kill_worker,
    "redis-restart": redis_restart,
    "pg-unreachable": pg_unreachable,
    "celery-down": celery_down,
    "provider-faults": provider_faults,
    "flapping": flapping,
    "load-spread": load_spread,
    "failoverbench": failoverbench,
    "conversations": conversations,
    "key-guessing": key_guessing,
    "logs": logs,
    "config-propagation": config_propagation,
    "failure-counts": failure_counts,
}


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--load-s", type=float, default=6 if quick else 15)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pg-down-s", type=float, default=10)
    parser.add_argument("--pg-mode", choices=("blackhole", "refuse"), default="blackhole")
    parser.add_argument(
        "--celery-down-s",
        type=float,
        default=float(os.environ.get("CHAOS_CELERY_DOWN_S", 20 if quick else 300)),
    )
    parser.add_argument("--guesses", type=int, default=300)
    args = parser.parse_args()
    print(f"[chaos] machine {h.machine_info()}", flush=True)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mr-chaos-") as tmp, h.services() as started:
        stack = Stack(Path(tmp), args, started)
        try:
            stack.up()
            print("[chaos] stack up", flush=True)
            for name in args.only:
                print(f"[chaos] {name} ...", flush=True)
                try:
                    outcome = h.run_async(RUNNERS[name](stack))
                except Exception as exc:  # a crashed scenario is a failed one, with its reason
                    outcome = Outcome(name, "fail", problems=[f"{type(exc).__name__}: {exc}"])
                outcomes.append(outcome)
                print(render(outcome), flush=True)
        finally:
            stack.proxy.stop()
    print("\n| scenario | result | problems |\n|---|---|---|")
    for outcome in outcomes:
        print(f"| {outcome.name} | {outcome.status} | {'; '.join(outcome.problems)} |")
    out_dir = h.ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"chaos-{stack.run_id}.json"
    path.write_bytes(
        orjson.dumps(
            {
                "machine": h.machine_info(),
                "scenarios": [o.__dict__ for o in outcomes],
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    print(f"[chaos] results: {path.relative_to(h.ROOT)}")
    return 1 if any(o.status == "fail" for o in outcomes) else 0


def render(outcome: Outcome) -> str:
    lines = [f"  {outcome.status.upper()}: {outcome.name}"]
    for key, value in outcome.figures.items():
        lines.append(f"    {key}: {value}")
    for problem in outcome.problems:
        lines.append(f"    ! {problem}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
