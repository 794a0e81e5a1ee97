"""Which ASGI server to run the gateway on: uvicorn (uvloop + httptools) or granian.

Starts the real Django application under each server with the same number of workers and
measures, in one run on the same machine, requests per second at concurrency 32 and the
latency at concurrency 1 with wrk against ``/healthz`` (a Django view, so the figure includes
Django's request cycle and the request-log middleware, and nothing else).

    .venv/bin/python bench/asgi_server.py [--workers 2] [--seconds 5]

Prints a JSON object and a small table. Needs ``wrk`` (apt install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def server_command(name: str, port: int, workers: int) -> list[str]:
    if name == "uvicorn":
        return [
            PY,
            "-m",
            "uvicorn",
            "megarouter.asgi:application",
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
        ]
    return [
        PY,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--no-ws",
        "--log-level",
        "warning",
        "megarouter.asgi:application",
    ]


def parse_wrk(output: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    lat: dict[str, float] = {}
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", output)
        value, unit = float(match.group(1)), match.group(2)
        lat[f"p{pct}_ms"] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return {"rps": rps, **lat}


def wrk(port: int, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}/healthz",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def measure(name: str, workers: int, seconds: int) -> dict[str, object]:
    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        server_command(name, port, workers),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port)
        wrk(port, 8, 1)  # warm up every worker
        c1 = wrk(port, 1, seconds)
        c32 = wrk(port, 32, seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    return {"server": name, "workers": workers, "c1": c1, "c32": c32}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    results = [measure(name, args.workers, args.seconds) for name in ("uvicorn", "granian")]
    print(json.dumps(results, indent=2))
    header = ("server", "c=1 p50 ms", "c=1 p99 ms", "c=32 req/s", "c=32 p99 ms")
    print("\n{:10} {:>11} {:>11} {:>11} {:>12}".format(*header))
    for r in results:
        print(
            f"{r['server']:10} {r['c1']['p50_ms']:11.2f} {r['c1']['p99_ms']:11.2f} "
            f"{r['c32']['rps']:11.0f} {r['c32']['p99_ms']:12.2f}"
        )


if __name__ == "__main__":
    main()
