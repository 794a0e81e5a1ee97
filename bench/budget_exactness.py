"""Budget exactness under concurrency: N concurrent reservations from two processes against a
$0.01 key budget. Passes when the total charged never exceeds the limit and the number admitted
is within one of floor(limit / cost) (no false refusals). Then measures the per-call latency of
reserve (+ settle) one request at a time.

    # Redis backend (two processes sharing Redis; PostgreSQL for the durable rows)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/megarouter_billing \\
    REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python bench/budget_exactness.py

    # database backend, embedded mode (a fresh SQLite file shared by the two processes)
    .venv/bin/python bench/budget_exactness.py --embedded

Options: --requests 1000 --cost 0.00003 --limit 0.01 --latency-requests 300.
Migrates the database first. Prints one JSON object. Leaves a tenant named bench-<hex> behind
in the database it used (ledger rows are append-only); the Redis keys it used are deleted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--cost", default="0.00003")
    parser.add_argument("--limit", default="0.01")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--embedded", action="store_true", help="database backend on SQLite")
    args = parser.parse_args()

    env = dict(os.environ)
    tmp = None
    if args.embedded:
        tmp = tempfile.TemporaryDirectory(prefix="mr-bench-")
        for name in ("DATABASE_URL", "REDIS_URL", "BILLING_ADMISSION_BACKEND"):
            env.pop(name, None)
        env["MEGAROUTER_DATA_DIR"] = tmp.name
    subprocess.run([PY, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
    env["BILLING_REDIS_PREFIX"] = f"mrbench:{uuid.uuid4().hex[:8]}"
    os.environ.update(env)
    for name in ("DATABASE_URL", "REDIS_URL", "BILLING_ADMISSION_BACKEND"):
        if name not in env:
            os.environ.pop(name, None)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")
    import django

    django.setup()
    from django.conf import settings

    from billing import services
    from billing.admission import get_backend
    from billing.models import LedgerEntry, UsageRecord
    from orgs import services as org_services
    from orgs.audit import Actor
    from orgs.models import Membership, Node

    system = Actor.system()
    from django.contrib.auth import get_user_model

    slug = f"bench-{uuid.uuid4().hex[:8]}"
    owner = get_user_model().objects.create(username=slug)
    org = org_services.organization_create(actor=system, name=slug, slug=slug, owner=owner)
    root = Node.objects.get(organization=org, parent__isnull=True)
    dept = org_services.node_create(actor=system, parent=root, name="d", slug="d")
    team = org_services.node_create(actor=system, parent=dept, name="t", slug="t")
    project = org_services.node_create(actor=system, parent=team, name="p", slug="p")
    membership = Membership.objects.get(user=owner, node=root)

    def key_with_budget(limit: str, name: str) -> int:
        key = org_services.api_key_create(
            actor=system, project=project, membership=membership, name=name
        ).api_key
        services.budget_create(
            actor=system,
            organization=org,
            scope="key",
            scope_id=key.pk,
            period="monthly",
            limit_usd=limit,
        )
        return key.pk

    services.transfer_record(actor=system, organization=org, amount="1000", reference="bench")
    key_id = key_with_budget(args.limit, "exactness")
    latency_key = key_with_budget("1000", "latency")

    def burst(key: int, requests: int, *, sequential: bool = False, start: float = 0) -> dict:
        cmd = [
            PY,
            "manage.py",
            "billing_burst",
            "--key-id",
            str(key),
            "--requests",
            str(requests),
            "--cost",
            args.cost,
            "--start-at",
            str(start),
        ]
        if sequential:
            cmd.append("--sequential")
        return cmd

    start = time.time() + 3.0
    per = [args.requests // args.processes] * args.processes
    per[0] += args.requests - sum(per)
    procs = [
        subprocess.Popen(burst(key_id, n, start=start), cwd=ROOT, env=env, stdout=subprocess.PIPE)
        for n in per
    ]
    workers = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"worker failed with {p.returncode}")
        workers.append(json.loads(out.decode().strip().splitlines()[-1]))

    posted = 0
    while True:
        batch = services.usage_events_post(limit=5000).events
        posted += batch
        if batch == 0:
            break
    admitted = sum(w["admitted"] for w in workers)
    cost, limit = Decimal(args.cost), Decimal(args.limit)
    expected = math.floor(limit / cost)
    charged = -sum(
        LedgerEntry.objects.filter(organization=org, kind="usage").values_list("amount", flat=True)
    )
    records = UsageRecord.objects.filter(organization=org).count()

    # per-call latency: one request at a time, reserve + settle (settle includes the DB write)
    lat = subprocess.run(
        [*burst(latency_key, args.latency_requests, sequential=True)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        check=True,
    )
    latency = json.loads(lat.stdout.decode().strip().splitlines()[-1])
    while services.usage_events_post(limit=5000).events:
        pass

    backend = get_backend()
    if backend.name == "redis":
        keys = list(backend.sync.scan_iter(match=f"{backend.prefix}:*", count=1000))
        if keys:
            backend.sync.delete(*keys)
    result = {
        "backend": backend.name,
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "processes": args.processes,
        "requests": args.requests,
        "cost_per_request": str(cost),
        "limit": str(limit),
        "expected_admitted": expected,
        "admitted": admitted,
        "refused": {
            k: sum(w["refused"].get(k, 0) for w in workers)
            for k in {c for w in workers for c in w["refused"]}
        },
        "charged": str(charged),
        "usage_records": records,
        "within_limit": charged <= limit,
        "within_one": abs(admitted - expected) <= 1,
        "burst_seconds": max(w["seconds"] for w in workers),
        "sequential_reserve_ms_p50": latency["reserve_ms_p50"],
        "sequential_reserve_ms_p99": latency["reserve_ms_p99"],
    }
    print(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()
    if not (result["within_limit"] and result["within_one"] and records == admitted):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
