"""Runs the whole product on one machine: gateway (ASGI), Celery worker, Celery beat and the
provider simulator. Ctrl-C (or SIGTERM) stops all of them. Used by ``make run``.

Once the gateway answers, the credentials ``scripts/prepare.py`` printed are printed again, last
(``make credentials`` prints them any time). Celery logs at ``CELERY_LOG_LEVEL`` (WARNING by
default: a line a second of task chatter otherwise buries them). Ports: ``PORT`` for the gateway,
``SIMULATOR_PORT`` (``PORT`` + 1100) for the simulator.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(ROOT))

from scripts.prepare import banner, data_dir, ports  # noqa: E402


def commands(port: int, workers: int, sim_port: int) -> dict[str, list[str]]:
    level = os.environ.get("CELERY_LOG_LEVEL", "WARNING")
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
            level,
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
        ],
        "beat": [PY, "-m", "celery", "-A", "megarouter", "beat", "--loglevel", level],
    }
    simulator = ROOT / "gateway" / "management" / "commands" / "simulate_providers.py"
    if simulator.exists():
        # The demo deploys every catalog model on the simulator, windows up to 20M tokens: the
        # simulator takes what the catalog says (the gateway's context filter guards the
        # windows), instead of its own 128k default for every model.
        procs["simulator"] = [
            *(PY, "manage.py", "simulate_providers", "--port", str(sim_port)),
            *("--context-window", os.environ.get("SIMULATOR_CONTEXT_WINDOW", "100000000")),
        ]
    return procs


def _answering(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def main() -> int:
    port, sim_port = ports()
    workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name, cmd in commands(port, workers, sim_port).items():
        children[name] = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        print(f"[run] started {name} (pid {children[name].pid})", flush=True)

    exit_code = 0
    announced = False
    started = time.monotonic()
    while not stopping:
        if not announced and (_answering(port) or time.monotonic() - started > 60):
            announced = True
            credentials = data_dir() / "credentials.json"
            if credentials.exists():
                summary = {**json.loads(credentials.read_text()), "state": "running"}
                print(banner(summary), flush=True)
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
