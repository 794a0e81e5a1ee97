"""Runs the whole product on one machine: gateway (ASGI), Celery worker, Celery beat and the
provider simulator. Ctrl-C (or SIGTERM) stops all of them. Used by ``make run``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def commands(port: int, workers: int) -> dict[str, list[str]]:
    procs = {
        "gateway": [
            PY,
            "-m",
            "uvicorn",
            "megarouter.asgi:application",
            "--host",
            os.environ.get("HOST", "127.0.0.1"),
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
        ],
        "worker": [
            PY,
            "-m",
            "celery",
            "-A",
            "megarouter",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
        ],
        "beat": [PY, "-m", "celery", "-A", "megarouter", "beat", "--loglevel", "INFO"],
    }
    simulator = ROOT / "gateway" / "management" / "commands" / "simulate_providers.py"
    if simulator.exists():
        sim_port = os.environ.get("SIMULATOR_PORT", "9100")
        procs["simulator"] = [PY, "manage.py", "simulate_providers", "--port", sim_port]
    return procs


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name, cmd in commands(port, workers).items():
        children[name] = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        print(f"[run] started {name} (pid {children[name].pid})", flush=True)

    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"[run] {name} exited with {child.returncode}; stopping the rest", flush=True)
                exit_code = child.returncode or 1
                stopping = True
                break
        time.sleep(0.3)

    # SIGTERM to each leader lets it shut its own children down cleanly (Celery's pool,
    # uvicorn's workers); whatever is left of a group after the grace period is killed.
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 10
    for child in children.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    print("[run] stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
