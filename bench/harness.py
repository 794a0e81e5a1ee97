"""Shared pieces of the benchmark (bench/run.py) and the chaos suite (bench/chaos.py).

Pure helpers first (percentiles, wrk output parsing, stall detection, /proc readings), tested in
tests/bench/; then the process plumbing: free ports, services started in their own process
group and always stopped, a raw-socket HTTP/1.1 client (keep-alive, chunked, SSE) whose own
cost is a few tens of microseconds, and the production-mode environment of the gateway.

Nothing here reaches anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = "127.0.0.1"

# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default). ``pct`` in 0..100."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError("pct must be within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99 and max of a sample (same unit as the input)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": sum(values) / len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def added(gateway: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    """Per-percentile difference ``gateway - direct`` (what the gateway adds)."""
    return {k: gateway[k] - direct[k] for k in ("p50", "p90", "p99") if k in gateway}


def stalls(arrivals: Sequence[float], pace_ms: float, threshold_ms: float = 100.0) -> list[float]:
    """Gaps (ms) between consecutive arrivals (seconds) longer than ``pace_ms + threshold_ms``."""
    limit = pace_ms + threshold_ms
    gaps = ((b - a) * 1000 for a, b in itertools.pairwise(arrivals))
    return [gap for gap in gaps if gap > limit]


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def duration_ms(text: str) -> float:
    """A wrk duration ("812.00us", "1.20ms", "2.01s", "1.00m") in milliseconds."""
    match = re.fullmatch(r"\s*([\d.]+)(us|ms|s|m)\s*", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> dict[str, float]:
    """The figures of ``wrk --latency`` output: rps, requests, p50/p75/p90/p99 (ms), non2xx,
    socket errors (connect + read + write + timeout) and timeouts."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in ", text)
    if not rps or not total:
        raise ValueError("not wrk output (no Requests/sec line)")
    result: dict[str, float] = {"rps": float(rps.group(1)), "requests": int(total.group(1))}
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M)
        if match:
            result[f"p{pct}"] = duration_ms(match.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    counts = [int(g) for g in sock.groups()] if sock else [0, 0, 0, 0]
    result["socket_errors"] = sum(counts)
    result["timeouts"] = counts[3]
    return result


def sustained(steps: Sequence[dict[str, Any]], p99_limit_ms: float = 1000.0) -> dict[str, Any]:
    """The step with the highest rps among those with p99 under the limit and no errors; an
    empty dict when none qualifies. Each step: {"connections", "rps", "p99", "non2xx",
    "socket_errors"}."""
    good = [
        s
        for s in steps
        if s.get("requests", 0) > 0
        and s.get("p99", math.inf) < p99_limit_ms
        and s.get("non2xx", 0) == 0
        and s.get("socket_errors", 0) == 0
    ]
    return max(good, key=lambda s: s["rps"]) if good else {}


# ---------------------------------------------------------------- machine and processes


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "loadavg": load_average(),
        "python": sys.version.split()[0],
    }


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def parse_status_rss_kib(status_text: str) -> int:
    """VmRSS in KiB from the text of /proc/<pid>/status (0 when absent: a zombie)."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", status_text, re.M)
    return int(match.group(1)) if match else 0


def rss_mib(pid: int) -> float:
    try:
        return parse_status_rss_kib(Path(f"/proc/{pid}/status").read_text()) / 1024
    except OSError:
        return 0.0


def children_of(pid: int) -> list[int]:
    """Direct child pids (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.extend(int(x) for x in (task / "children").read_text().split())
    return sorted(set(found))


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children_of(stack.pop()):
            out.append(child)
            stack.append(child)
    return out


def worker_pids(pid: int) -> list[int]:
    """The server worker processes under a master (uvicorn's ``multiprocessing`` spawn
    children), leaving out helpers such as the resource tracker; the master itself when it
    has no such children (one worker)."""
    found = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found or [pid]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open within {timeout:.0f}s")


@dataclass
class Service:
    """A child process in its own session (process group), stopped with its whole group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int | None = None
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log_file: Any = field(default=None, repr=False)

    def start(self, timeout: float = 60.0) -> Service:
        out: Any = subprocess.DEVNULL
        if self.log is not None:
            self._log_file = self.log.open("ab")
            out = self._log_file
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=out, start_new_session=True
        )
        if self.port is not None:
            wait_port(self.port, timeout, self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> list[int]:
        return worker_pids(self.pid)

    def stop(self, grace: float = 8.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def services() -> Iterator[list[Service]]:
    """Collects started services and stops them all (reverse order) on the way out, also on
    Ctrl-C or an exception."""
    started: list[Service] = []
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- configuration


def base_env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "MEGAROUTER_ENV", "SECRET_KEY", "DEBUG")
    }
    env.update(
        {
            "MEGAROUTER_DATA_DIR": str(data_dir),
            "DJANGO_SETTINGS_MODULE": "megarouter.settings",
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
        }
    )
    return env


def production_env(
    data_dir: Path, *, database_url: str, redis_url: str, log_level: str = "WARNING"
) -> dict[str, str]:
    """MEGAROUTER_ENV=production with a freshly generated SECRET_KEY and Fernet key."""
    from cryptography.fernet import Fernet

    env = base_env(data_dir)
    env.update(
        {
            "MEGAROUTER_ENV": "production",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": secrets.token_urlsafe(48),
            "MEGAROUTER_ENCRYPTION_KEYS": bench_fernet_key(Fernet),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOG_LEVEL": log_level,
        }
    )
    return env


def bench_fernet_key(fernet: Any) -> str:
    """The Fernet key of the bench database's credentials, generated on first use and kept in
    var/bench-fernet.key (gitignored): a new key per run could not decrypt the stored one."""
    path = ROOT / "var" / "bench-fernet.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fernet.generate_key().decode())
        path.chmod(0o600)
    return path.read_text().strip()


DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/megarouter_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"


def simulator_service(port: int, env: dict[str, str], log: Path | None = None) -> Service:
    return Service(
        "simulator",
        [PY, "manage.py", "simulate_providers", "--port", str(port)],
        env,
        port=port,
        log=log,
    )


def gateway_service(port: int, env: dict[str, str], workers: int, log: Path | None) -> Service:
    return Service(
        "gateway",
        [
            PY,
            "-m",
            "uvicorn",
            "megarouter.asgi:application",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--lifespan",
            "on",
            "--log-level",
            "warning",
        ],
        env,
        port=port,
        log=log,
    )


def celery_service(env: dict[str, str], log: Path | None, *, beat: bool = False) -> Service:
    """A Celery worker (one process), with the beat scheduler inside it when ``beat``."""
    argv = [PY, "-m", "celery", "-A", "megarouter", "worker", "--concurrency", "1"]
    argv += ["--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
    if beat:
        argv += ["--beat", "--schedule", str(Path(env["MEGAROUTER_DATA_DIR"]) / "beat-schedule")]
    return Service("celery", argv, env, log=log)


def seed(env: dict[str, str], simulator_url: str, run_id: str) -> dict[str, Any]:
    """Migrate and seed (bench/seed.py) in a subprocess with the server's environment."""
    done = subprocess.run(
        [PY, str(ROOT / "bench" / "seed.py"), simulator_url, run_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding failed:\n{done.stderr[-3000:]}")
    return orjson.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- raw HTTP/1.1 client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_ms: float
    first_content_ms: float | None = None  # streams: time to the first content event
    content_times: list[float] = field(default_factory=list)  # perf_counter of each event


def chat_body(model: str, *, stream: bool = False, max_tokens: int = 16) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Say hello in five words"}],
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def content_of(event: bytes) -> str:
    """The text of one OpenAI chat SSE event (``data: {...}``), '' for anything else."""
    if not event.startswith(b"data:"):
        return ""
    payload = event[5:].strip()
    if payload == b"[DONE]" or not payload.startswith(b"{"):
        return ""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    choices = data.get("choices") or []
    if not choices:
        return ""
    return (choices[0].get("delta") or {}).get("content") or ""


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port (reconnects when closed)."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = headers or {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(
        self,
        path: str,
        body: bytes,
        *,
        stream: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        merged = {**self.headers, **(headers or {})}
        extra = "".join(f"{k}: {v}\r\n" for k, v in merged.items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        ).encode()
        started = time.perf_counter()
        self.writer.write(head + body)
        try:
            return await self._read(started, stream)
        except BaseException:
            await self.close()
            raise

    async def _read(self, started: float, stream: bool) -> Reply:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        reply = Reply(status, headers, b"", 0.0)
        stream = stream and status == 200  # an error answer is one JSON body
        buffer = b""
        parts: list[bytes] = []

        def feed(data: bytes) -> None:
            nonlocal buffer
            if not stream:
                parts.append(data)
                return
            now = time.perf_counter()
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                parts.append(event + b"\n\n")
                if content_of(event.strip()):
                    if reply.first_content_ms is None:
                        reply.first_content_ms = (now - started) * 1000
                    reply.content_times.append(now)

        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                feed((await self.reader.readexactly(size + 2))[:-2])
        elif "content-length" in headers:
            feed(await self.reader.readexactly(int(headers["content-length"])))
        else:
            feed(await self.reader.read())
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        reply.body = b"".join(parts)
        reply.elapsed_ms = (time.perf_counter() - started) * 1000
        return reply


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when installed (a cheaper client), else asyncio."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# ---------------------------------------------------------------- wrk


LUA = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def wrk_script(path: Path, model: str, key: str) -> Path:
    path.write_text(LUA.format(body=chat_body(model).decode(), key=key))
    return path


def wrk(url: str, script: Path, connections: int, seconds: float, threads: int = 1) -> dict:
    done = subprocess.run(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    result = parse_wrk(done.stdout)
    result["connections"] = connections
    return result
