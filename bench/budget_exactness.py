"""Budget exactness from outside: a production-mode deployment (PostgreSQL, Redis, a gateway of
``--workers`` uvicorn processes, or ``--groups`` such gateways on ports of their own sharing
the database and Redis as two hosts would, a Celery worker with beat, the provider
simulator), budgets created through the management API just before each burst, ``--requests``
concurrent requests per cell.

    make budget-exactness          # or: .venv/bin/python bench/budget_exactness.py [--quick]

Cells: each layer (key, member, organization, team node, request tag, prepaid balance) x each
variant (the tag layer's requests carry ``x-megarouter-tags: feature=bench``, its budget is on
that tag):

| variant | requests |
|---|---|
| plain | max_tokens 50, 50-token answers |
| stream | the same, streamed |
| long | no max_tokens, 16,000-token answers (the model's maximum output is 32,000) |
| prompt | 4,000 "!" (4,000 tokens to the provider, 1,000 by characters / 4), max_tokens 1 |
| lowered | paced 4 ms apart; the budget created at twice the cap, lowered to it after 50 answers |
| deleted | the budget created, then deleted, just before the burst (every request served) |

A budget layer's cell has a $1,000 balance and one budget of ``--limit`` at that layer; the
balance cell has no budget and a balance of ``--limit`` (credited by the operator's transfer
service: no tenant can raise a balance). Every cell is a fresh organization. Reported per cell:
served, refused, errors, spend (the usage records the books hold for the organization once
everything settled), overspend (spend - final limit), the budget's own ``spent`` and the balance
from the API, and false refusals: min(refused, floor(final headroom / cheapest served
request)), i.e. requests refused although what was left at the end would have paid one.

Then the crash: 50 slow streams, ``kill -9`` of one gateway worker after 3 s: every stream that
worker was relaying must be charged for at least the chunks its client received, and no hold of
the organization may be older than 60 s.

Prints one JSON object and a Markdown table, writes bench/results/budget-<time>.json; exits 1
when any cell overspent or the crash left something unbilled or held.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h

LAYERS = ("key", "member", "organization", "team", "tag", "balance")
TAG = "feature=bench"  # the tag layer's budget, and the tag every request of its cells carries
VARIANTS = ("plain", "stream", "long", "prompt", "lowered", "deleted")
# Per token: bx-std $0.10 / $0.40 per million (a plain request costs about $0.00002),
# bx-long $0.01 / $0.04 per million (a 16,000-token answer about $0.00064).
MODELS = {
    "bx-std": ("gpt-4o-mini~tokens=50", "0.0000001", "0.0000004"),
    "bx-long": ("gpt-4o-mini~tokens=16000", "0.00000001", "0.00000004"),
    "bx-slow": ("gpt-4o-mini~tokens=400~token_ms=25", "0.0000001", "0.0000004"),
}
LOWER_AFTER = 50  # answers before the lowered variant's PATCH
LOWER_PACE_S = 0.004  # between the lowered variant's requests (1,000 in 4 s)
D = Decimal


# ---------------------------------------------------------------- the Django side (subprocess)


def django_seed(simulator_url: str, run_id: str, balances: list[str]) -> dict[str, Any]:
    """The simulator's models and one organization per cell, credited ``balances[i]`` by the
    operator's transfer service (the only way a balance rises besides a card payment)."""
    from django.core.management import call_command

    from bench.seed import Simulator, Tenant
    from billing import services as billing
    from orgs import services as org_services
    from orgs.audit import Actor

    call_command("migrate", verbosity=0, interactive=False)
    sim = Simulator(simulator_url)
    for name, (upstream, price_in, price_out) in MODELS.items():
        sim.model(
            name,
            upstream,
            price_in=price_in,
            price_out=price_out,
            max_output_tokens=32000,
            context_window=200000,
        )
    tenants = []
    for index, balance in enumerate(balances):
        t = Tenant(f"bx-{run_id}-{index}")
        token = org_services.access_token_create(user=t.user, name="budget bench")
        tenants.append(
            {
                "slug": t.org.slug,
                "org_id": t.org.pk,
                "key": t.key.raw_key,
                "key_id": t.key.api_key.pk,
                "member_id": t.membership.pk,
                "team_id": t.nodes["team"].pk,
                "token": token.raw_token,
            }
        )
        billing.transfer_record(
            actor=Actor.system(),
            organization=t.org,
            amount=balance,
            reference=f"bx {run_id} {index}",
        )
    return {"tenants": tenants}


def django_usage(org_id: int, request_ids: list[str] | None = None) -> dict[str, Any]:
    """What the books and the counters hold for one organization right now."""
    from django.db.models import Count, Min, Sum
    from django.utils import timezone

    from billing.admission import get_backend
    from billing.models import Reservation, UsageEvent, UsageRecord

    records = UsageRecord.objects.filter(organization_id=org_id)
    # one query: records the Celery task commits meanwhile are all in or all out
    totals = records.aggregate(n=Count("id"), total=Sum("cost"), cheapest=Min("cost"))
    now = timezone.now()
    # open holds by request id: the durable rows and, with Redis, the counters' own
    rows = Reservation.objects.filter(organization_id=org_id)
    holds = dict(rows.values_list("request_id", "created_at"))
    backend = get_backend()
    if backend.name == "redis":
        zset = f"{backend.prefix}:deadlines"
        for member in backend.sync.zrange(zset, 0, -1):
            org_text, request_id = member.split("|", 1)
            if org_text != str(org_id):
                continue
            at = backend.sync.hget(backend.keys(org_id).res(request_id), "at")
            created = dt.datetime.fromtimestamp(int(at or 0) / 1000, dt.UTC)
            holds.setdefault(request_id, created)
    out: dict[str, Any] = {
        "records": totals["n"],
        "spend": str(totals["total"] or 0),
        "cheapest": str(totals["cheapest"]) if totals["cheapest"] is not None else None,
        "events": UsageEvent.objects.filter(organization_id=org_id).count(),
        "holds": len(holds),
        "oldest_hold_s": max(((now - c).total_seconds() for c in holds.values()), default=0.0),
    }
    if request_ids is not None:
        out["tokens_out"] = dict(
            records.filter(request_id__in=request_ids).values_list("request_id", "tokens_out")
        )
    return out


def django_serve() -> None:
    """Answer one JSON command per stdin line (the benchmark's window into the books)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")
    django.setup()
    handlers = {"seed": django_seed, "usage": django_usage}
    for line in sys.stdin:
        command = json.loads(line)
        try:
            reply = handlers[command.pop("op")](**command)
        except Exception as exc:  # reported to the parent, which stops
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


class Books:
    """The parent's handle on ``django_serve`` running with the server's environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [h.PY, __file__, "--django"],
            cwd=h.ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(f"{op}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


# ---------------------------------------------------------------- requests from outside


def body(variant: str) -> bytes:
    import orjson

    if variant == "long":
        payload: dict[str, Any] = {"model": "benchsim/bx-long"}
        text = "Tell me everything about budgets"
    elif variant == "prompt":
        payload = {"model": "benchsim/bx-std", "max_tokens": 1}
        text = "!" * 4000
    else:
        payload = {"model": "benchsim/bx-std", "max_tokens": 50}
        text = "Say hello in five words"
    payload["messages"] = [{"role": "user", "content": text}]
    if variant == "stream":
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return orjson.dumps(payload)


@dataclass
class Outcome:
    status: int = 0
    code: str = ""
    request_id: str = ""
    chunks: int = 0  # content events received (streams)
    error: str = ""


def outcome_of(reply: h.Reply) -> Outcome:
    import orjson

    out = Outcome(reply.status, request_id=reply.headers.get("x-request-id", ""))
    out.chunks = len(reply.content_times)
    if reply.status != 200:
        try:
            out.code = orjson.loads(reply.body)["error"].get("code") or ""
        except (ValueError, KeyError, TypeError, AttributeError):
            out.code = "unparsed"
    return out


async def one(
    port: int, key: str, payload: bytes, stream: bool, delay: float = 0, tagged: bool = False
) -> Outcome:
    await asyncio.sleep(delay)
    headers = {"Authorization": f"Bearer {key}"}
    if tagged:
        headers["x-megarouter-tags"] = TAG
    conn = h.Connection(port, headers)
    try:
        return outcome_of(await conn.post("/v1/chat/completions", payload, stream=stream))
    except Exception as exc:  # a reset connection and the like: counted as an error
        return Outcome(error=type(exc).__name__)
    finally:
        await conn.close()


class Api:
    """The management API as the organization's owner (a personal access token)."""

    def __init__(self, port: int, tenant: dict[str, Any]) -> None:
        import httpx

        self.base = f"http://{h.HOST}:{port}/api/orgs/{tenant['slug']}"
        self.client = httpx.AsyncClient(
            headers={"Authorization": f"Token {tenant['token']}"}, timeout=30
        )

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        reply = await self.client.request(method, self.base + path, json=payload)
        if reply.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return reply.json() if reply.content else None

    async def close(self) -> None:
        await self.client.aclose()


def scope_of(layer: str, tenant: dict[str, Any]) -> dict[str, Any]:
    if layer == "tag":
        return {"scope": "tag", "tag": TAG}
    ids = {"key": tenant["key_id"], "member": tenant["member_id"], "team": tenant["team_id"]}
    return {"scope": layer, "scope_id": ids.get(layer)}


# ---------------------------------------------------------------- one cell


@dataclass
class Cell:
    layer: str
    variant: str
    limit: Decimal
    served: int = 0
    refused: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    spend: Decimal = Decimal(0)
    overspend: Decimal | None = None
    false_refusals: int | None = None
    budget_spent: str | None = None
    balance: str | None = None
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "variant": self.variant,
            "limit": str(self.limit),
            "served": self.served,
            "refused": self.refused,
            "errors": self.errors,
            "spend": str(self.spend),
            "overspend": None if self.overspend is None else str(self.overspend),
            "false_refusals": self.false_refusals,
            "budget_spent_api": self.budget_spent,
            "balance_api": self.balance,
            "seconds": round(self.seconds, 2),
        }


async def run_cell(
    ports: list[int], books: Books, tenant: dict[str, Any], cell: Cell, requests: int
) -> Cell:
    """``ports``: one per gateway group; the management API goes to the first, the requests
    to each in turn (two groups share nothing but PostgreSQL and Redis, as two hosts would)."""
    api = Api(ports[0], tenant)
    budget: dict[str, Any] | None = None
    try:
        if cell.layer != "balance":
            start = cell.limit * 2 if cell.variant == "lowered" else cell.limit
            budget = await api.call(
                "POST",
                "/budgets/",
                {**scope_of(cell.layer, tenant), "period": "monthly", "limit_usd": str(start)},
            )
            if cell.variant == "deleted":
                await api.call("DELETE", f"/budgets/{budget['id']}/")
        payload = body(cell.variant)
        stream = cell.variant == "stream"
        started = time.perf_counter()
        # the lowered variant is paced (LOWER_PACE_S apart), so that most of it arrives after
        # the lowering; the others start together
        pace = LOWER_PACE_S if cell.variant == "lowered" else 0.0
        tasks = [
            asyncio.ensure_future(
                one(
                    ports[i % len(ports)],
                    tenant["key"],
                    payload,
                    stream,
                    i * pace,
                    tagged=cell.layer == "tag",
                )
            )
            for i in range(requests)
        ]
        if cell.variant == "lowered" and budget is not None:
            for done, future in enumerate(asyncio.as_completed(tasks), 1):
                await future
                if done == LOWER_AFTER:
                    await api.call(
                        "PATCH", f"/budgets/{budget['id']}/", {"limit_usd": str(cell.limit)}
                    )
        outcomes = await asyncio.gather(*tasks)
        cell.seconds = time.perf_counter() - started
        for o in outcomes:
            if o.status == 200:
                cell.served += 1
            elif o.code in ("budget_exceeded", "insufficient_balance"):
                cell.refused += 1
            else:
                name = o.error or f"{o.status} {o.code}"
                cell.errors[name] = cell.errors.get(name, 0) + 1
        books_now = await settled(books, tenant["org_id"], cell.served)
        cell.spend = D(books_now["spend"])
        if cell.variant != "deleted":
            cell.overspend = cell.spend - cell.limit
            cheapest = books_now["cheapest"]
            if cheapest is not None and D(cheapest) > 0:
                headroom = max(cell.limit - cell.spend, D(0))
                cell.false_refusals = min(cell.refused, math.floor(headroom / D(cheapest)))
        else:
            cell.false_refusals = cell.refused
        if budget is not None and cell.variant != "deleted":
            cell.budget_spent = (await api.call("GET", f"/budgets/{budget['id']}/"))["spent"]
        cell.balance = (await api.call("GET", "/billing/balance/"))["balance"]
    finally:
        await api.close()
    return cell


async def settled(books: Books, org_id: int, served: int, timeout: float = 120.0) -> dict:
    """The organization's books once every served request has its usage record, no event is
    pending and no hold is open."""
    deadline = time.monotonic() + timeout
    while True:
        now = books.ask("usage", org_id=org_id)
        if now["records"] >= served and now["events"] == 0 and now["holds"] == 0:
            return now
        if time.monotonic() > deadline:
            raise RuntimeError(f"organization {org_id} did not settle: {now}")
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------- the crash


async def slow_stream(client: Any, port: int, key: str, payload: bytes) -> Outcome:
    """One stream, read until it ends or its connection dies: the reply head's request id
    and the content events received before that."""
    import httpx

    out = Outcome()
    try:
        async with client.stream(
            "POST",
            f"http://{h.HOST}:{port}/v1/chat/completions",
            content=payload,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ) as reply:
            out.status = reply.status_code
            out.request_id = reply.headers.get("x-request-id", "")
            async for line in reply.aiter_lines():
                if h.content_of(line.encode()):
                    out.chunks += 1
    except httpx.HTTPError as exc:
        out.error = type(exc).__name__
    return out


async def crash(gateway: h.Service, port: int, books: Books, tenant: dict[str, Any]) -> dict:
    """50 slow streams; kill -9 one worker after 3 s; then watch the books for 60 s."""
    import httpx
    import orjson

    payload = orjson.dumps(
        {
            "model": "benchsim/bx-slow",
            "max_tokens": 400,
            "stream": True,
            "messages": [{"role": "user", "content": "Count slowly"}],
        }
    )
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        tasks = [
            asyncio.ensure_future(slow_stream(client, port, tenant["key"], payload))
            for _ in range(50)
        ]
        await asyncio.sleep(3.0)
        victim = gateway.workers()[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        outcomes = await asyncio.gather(*tasks)
    cut = [o for o in outcomes if o.error or o.status != 200]
    ids = [o.request_id for o in outcomes if o.request_id]
    charged_after: float | None = None
    while time.monotonic() - killed_at < 60:
        now = books.ask("usage", org_id=tenant["org_id"], request_ids=ids)
        if now["holds"] == 0 and now["events"] == 0 and now["records"] >= len(ids):
            charged_after = time.monotonic() - killed_at
            break
        await asyncio.sleep(1.0)
    now = books.ask("usage", org_id=tenant["org_id"], request_ids=ids)
    charged = now["tokens_out"]
    short = [
        {"request_id": o.request_id, "received": o.chunks, "charged": charged.get(o.request_id)}
        for o in outcomes
        if o.request_id and (charged.get(o.request_id) or 0) < o.chunks
    ]
    return {
        "streams": len(outcomes),
        "cut_by_the_kill": len(cut),
        "chunks_received_by_cut_streams": sum(o.chunks for o in cut),
        "tokens_charged_to_cut_streams": sum(charged.get(o.request_id) or 0 for o in cut),
        "largest_charge_above_received": max(
            ((charged.get(o.request_id) or 0) - o.chunks for o in cut), default=0
        ),
        "cut_without_request_id": sum(1 for o in cut if not o.request_id),
        "records": now["records"],
        "everything_charged_after_s": None if charged_after is None else round(charged_after, 1),
        "relayed_but_not_charged": short,
        "holds_open_60s_after_kill": now["holds"],
        "oldest_hold_s": round(now["oldest_hold_s"], 1),
    }


# ---------------------------------------------------------------- the run


def table(cells: list[Cell]) -> str:
    lines = [
        "| layer | variant | served | refused | errors | spend | overspend | false refusals |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        errors = sum(c.errors.values())
        over = "—" if c.overspend is None else f"{min(c.overspend, D(0)):+.6f}"
        if c.overspend is not None and c.overspend > 0:
            over = f"**{c.overspend:+.6f}**"
        false = "—" if c.false_refusals is None else c.false_refusals
        lines.append(
            f"| {c.layer} | {c.variant} | {c.served} | {c.refused} | {errors} | "
            f"${c.spend:.6f} | {over} | {false} |"
        )
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> list[Cell]:
    return [
        Cell(layer, variant, D(args.limit))
        for layer in args.layers
        for variant in args.variants
        # nobody can lower or delete a balance
        if not (layer == "balance" and variant in ("lowered", "deleted"))
    ]


async def bench(
    args: argparse.Namespace,
    gateway: h.Service,
    ports: list[int],
    books: Books,
    tenants: list[dict],
) -> dict:
    cells = plan(args)
    for cell, tenant in zip(cells, tenants, strict=False):
        await run_cell(ports, books, tenant, cell, args.requests)
        print(json.dumps(cell.row()), file=sys.stderr, flush=True)
    crashed = None if args.no_crash else await crash(gateway, ports[0], books, tenants[-1])
    return {"cells": cells, "crash": crashed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--limit", default="0.01")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--groups",
        type=int,
        default=1,
        help="gateway groups (each its own uvicorn with --workers workers, sharing PostgreSQL "
        "and Redis as two hosts would); each cell's requests go to them in turn",
    )
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-crash", action="store_true")
    parser.add_argument("--quick", action="store_true", help="200 requests per cell")
    parser.add_argument("--database-url", default=h.DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    parser.add_argument(
        "--admission",
        choices=("redis", "db"),
        default="redis",
        help="the admission backend (db: budgets and holds in PostgreSQL, no Redis counters)",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests = 200
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
    results = h.ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mr-budget-") as tmp, h.services() as started:
        data = Path(tmp)
        env = h.production_env(data, database_url=args.database_url, redis_url=args.redis_url)
        env["BILLING_REDIS_PREFIX"] = f"bx{run_id}"
        env["BILLING_ADMISSION_BACKEND"] = args.admission
        sim_port = h.free_port()
        ports = [h.free_port() for _ in range(args.groups)]
        started.append(h.simulator_service(sim_port, h.base_env(data)).start())
        books = Books(env)
        balances = [args.limit if c.layer == "balance" else "1000" for c in plan(args)]
        seeded = books.ask(
            "seed",
            simulator_url=f"http://{h.HOST}:{sim_port}",
            run_id=run_id,
            balances=[*balances, "1000"],  # the last: the crash
        )
        gateways = []
        for group, port in enumerate(ports):
            log = results / f"budget-{run_id}-gateway{group}.log"
            gateways.append(h.gateway_service(port, env, args.workers, log).start())
            started.append(gateways[-1])
        started.append(h.celery_service(env, data / "celery.log", beat=True).start())
        try:
            out = h.run_async(bench(args, gateways[0], ports, books, seeded["tenants"]))
        finally:
            books.close()
        check = subprocess.run(
            [h.PY, "manage.py", "billing_check"],
            cwd=h.ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
    cells_out: list[Cell] = out["cells"]
    result = {
        "run_id": run_id,
        "machine": h.machine_info(),
        "workers": args.workers,
        "groups": args.groups,
        "admission": args.admission,
        "requests_per_cell": args.requests,
        "limit": args.limit,
        "cells": [c.row() for c in cells_out],
        "crash": out["crash"],
        "billing_check": {
            "exit": check.returncode,
            "output": check.stdout[-2000:] + check.stderr[-2000:],
        },
    }
    path = results / f"budget-{run_id}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(table(cells_out))
    overspent = [c for c in cells_out if c.overspend is not None and c.overspend > 0]
    crashed = out["crash"]
    bad_crash = crashed is not None and (
        crashed["relayed_but_not_charged"] or crashed["holds_open_60s_after_kill"]
    )
    errors = [c for c in cells_out if c.errors]
    return 1 if overspent or bad_crash or errors or check.returncode else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--django"]:
        django_serve()
    else:
        sys.exit(main())
