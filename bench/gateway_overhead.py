"""Gateway-added latency and throughput, /v1/chat/completions, measured with wrk.

    .venv/bin/python bench/gateway_overhead.py [--duration 8] [--workers 1]
        [--skip-django-view] [--services] [--auto]

Starts the provider simulator and, one after the other, the gateway served two ways: the raw
ASGI front door (``megarouter.asgi:application``, production) and the same handlers behind a
Django async view (``megarouter.asgi:django_application``, full middleware stack). Each gets a
fresh SQLite database in a temporary folder with one tenant, one key and one model deployed on
the simulator. wrk POSTs a small chat request: c=1 for latency percentiles, c=32 for
requests/s. The simulator alone is measured the same way; "added" = gateway minus simulator.
``--services`` keeps DATABASE_URL / REDIS_URL (Redis admission, PostgreSQL rows) and flushes
that database first. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

SEED = """
import django, json, sys
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
if sys.argv[2:] == ["flush"]:
    call_command("flush", interactive=False, verbosity=0)
from tests.gateway import factories as f
tenant = f.tenant_create()
key = f.api_key_create(tenant)
provider = f.provider_create("openai", "openai", sys.argv[1] + "/openai/v1")
model = f.model_create(provider, "gpt-bench")
credential = f.credential_create()
f.deployment_create(model, name="sim-bench", base_url=sys.argv[1] + "/openai/v1",
                    upstream_name="gpt-4o-mini", credential=credential)
# ``--auto``: a tenth-price twin on the same upstream, and a key limited to the two
from decimal import Decimal
mini = f.model_create(provider, "gpt-bench-mini", price_in=Decimal("0.0000002"),
                      price_out=Decimal("0.0000008"), quality_tier=2)
f.deployment_create(mini, name="sim-bench-mini", base_url=sys.argv[1] + "/openai/v1",
                    upstream_name="gpt-4o-mini", credential=credential)
auto_key = f.api_key_create(tenant, allowed_models=["openai/gpt-bench", "openai/gpt-bench-mini"])
print(json.dumps({"key": key, "auto_key": auto_key}))
"""

LUA = """
wrk.method = "POST"
wrk.body = '{"model": "MODEL", "max_tokens": 16, '
    .. '"messages": [{"role": "user", "content": "Say hello in five words"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer KEY"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "90", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        result[f"p{pct}"] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = int(errors.group(1)) if errors else 0
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-django-view", action="store_true")
    parser.add_argument(
        "--auto",
        action="store_true",
        help='send model "auto" (the routing decision on the path) with a key limited to two '
        "models on the same upstream, instead of a fixed model",
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="keep DATABASE_URL / REDIS_URL (PostgreSQL + Redis admission); the database "
        "named by DATABASE_URL is FLUSHED before seeding",
    )
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "MEGAROUTER_DATA_DIR": tmp,
            "DJANGO_SETTINGS_MODULE": "megarouter.settings",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        if args.services:
            env["BILLING_REDIS_PREFIX"] = f"mrbench:{os.getpid()}"
        else:
            env.pop("DATABASE_URL", None)
            env.pop("REDIS_URL", None)
        try:
            sim_port = free_port()
            procs.append(
                subprocess.Popen(
                    [PY, "manage.py", "simulate_providers", "--port", str(sim_port), "--no-uvloop"],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(sim_port)
            sim = f"http://127.0.0.1:{sim_port}"
            seeded = subprocess.run(
                [PY, "-c", SEED, sim, *(["flush"] if args.services else [])],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            keys = json.loads(seeded.stdout.strip().splitlines()[-1])
            key = keys["auto_key"] if args.auto else keys["key"]
            rows = []
            sim_script = Path(tmp) / "sim.lua"
            sim_script.write_text(LUA.replace("MODEL", "gpt-4o-mini").replace("KEY", "sk-sim"))
            gw_script = Path(tmp) / "gw.lua"
            model = "auto" if args.auto else "openai/gpt-bench"
            gw_script.write_text(LUA.replace("MODEL", model).replace("KEY", key))
            upstream = f"{sim}/openai/v1/chat/completions"
            wrk(upstream, sim_script, 1, 2)  # warm-up
            base1, base32 = (
                wrk(upstream, sim_script, 1, args.duration),
                wrk(upstream, sim_script, 32, args.duration),
            )
            rows.append(("simulator alone", base1, base32))
            apps = [
                ("raw ASGI front door (chosen)", "megarouter.asgi:application"),
                ("Django async view + middleware", "megarouter.asgi:django_application"),
            ]
            if args.skip_django_view:
                apps.pop()
            for label, app in apps:
                port = free_port()
                server = subprocess.Popen(
                    [
                        PY,
                        "-m",
                        "uvicorn",
                        app,
                        "--port",
                        str(port),
                        "--workers",
                        str(args.workers),
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
                    cwd=ROOT,
                    env=env,
                )
                procs.append(server)
                wait_port(port)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                wrk(url, gw_script, 2, 3)  # warm caches and connection pools
                rows.append(
                    (
                        label,
                        wrk(url, gw_script, 1, args.duration),
                        wrk(url, gw_script, 32, args.duration),
                    )
                )
                server.terminate()
                server.wait(10)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)
    mode = "PostgreSQL + Redis" if args.services else "embedded (SQLite)"
    print(
        f"{mode}; model {'auto' if args.auto else 'fixed'}; uvicorn workers: {args.workers}; "
        f"wrk {args.duration}s per run; times in ms"
    )
    print("| server | c=1 p50 | c=1 p90 | c=1 p99 | added p50 | added p99 | c=32 req/s | non-2xx |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0][1]
    for label, one, many in rows:
        added50 = one["p50"] - base["p50"]
        added99 = one["p99"] - base["p99"]
        print(
            f"| {label} | {one['p50']:.2f} | {one['p90']:.2f} | {one['p99']:.2f} | "
            f"{added50:.2f} | {added99:.2f} | {many['rps']:.0f} | "
            f"{one['errors'] + many['errors']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
