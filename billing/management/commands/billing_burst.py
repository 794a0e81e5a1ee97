"""Fire N concurrent admissions for one API key through the configured backend and print a
JSON summary: how many were admitted or refused (by code) and reserve latency percentiles.

    manage.py billing_burst --key-id 12 --requests 500 --cost 0.00003 [--no-settle] [--sequential]

Each admitted request is settled at ``--cost`` (so it is charged), unless ``--no-settle``.
With ``--hold-seconds`` each waits between reserve and settle, having checkpointed
``--progress-tokens`` relayed output tokens on its hold as a stream does (tests kill the
process then).
Used by bench/budget_exactness.py and the two-process test; also a quick load check.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections import Counter
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from billing.admission import AdmissionContext, HoldRequest, UsageEventData, get_backend
from billing.admission.service import admission_progress
from billing.errors import AdmissionRefused
from orgs.models import ApiKey

# The price a checkpointed burst request is charged at ($1 / $2 per million tokens)
BURST_PRICE = SimpleNamespace(
    input_per_token=Decimal("0.000001"),
    output_per_token=Decimal("0.000002"),
    cached_input_per_token=None,
    cache_write_per_token=None,
    reasoning_per_token=None,
)


def context_for_key(key_id: int) -> AdmissionContext:
    key = ApiKey.objects.select_related("project", "organization").filter(pk=key_id).first()
    if key is None:
        raise CommandError(f"no API key with id {key_id}")
    _root, department_id, team_id, project_id = key.project.ancestor_ids
    return AdmissionContext(
        organization_id=key.organization_id,
        department_id=department_id,
        team_id=team_id,
        project_id=project_id,
        member_id=key.membership_id,
        key_id=key.pk,
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        time_zone=key.organization.time_zone,
    )


async def burst(
    ctx: AdmissionContext,
    *,
    requests: int,
    cost: Decimal,
    settle: bool,
    start_at: float,
    sequential: bool = False,
    hold_seconds: float = 0.0,
    progress_tokens: int = 0,
) -> dict[str, Any]:
    backend = get_backend()
    latencies: list[float] = []
    refused: Counter[str] = Counter()
    admitted = 0
    held: list[str] = []

    async def one() -> None:
        nonlocal admitted
        t0 = time.perf_counter()
        try:
            res = await backend.reserve(uuid.uuid4().hex, ctx, HoldRequest.fixed(cost, 20))
        except AdmissionRefused as exc:
            refused[exc.code] += 1
            return
        finally:
            latencies.append((time.perf_counter() - t0) * 1000)
        admitted += 1
        if hold_seconds:  # stands in for a slow provider call (tests kill us here)
            if "persist" in res.extra:
                await res.extra["persist"]
            if hasattr(backend, "flush_writes"):
                await backend.flush_writes()  # the durable copy is in the database
            if progress_tokens:
                await admission_progress(
                    res,
                    output_tokens=progress_tokens,
                    event=UsageEventData(model="openai/gpt-4o-mini", tokens_in=10),
                    price=BURST_PRICE,
                )
            held.append(res.request_id)
            if len(held) == requests:
                print(json.dumps({"held": held}), flush=True)
            await asyncio.sleep(hold_seconds)
        if settle:
            await backend.settle(res, cost, UsageEventData(tokens_in=10, tokens_out=10))
        else:
            await backend.release(res)

    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)  # both processes start together
    started = time.perf_counter()
    if sequential:  # one at a time: the per-call latency without queueing
        for _ in range(requests):
            await one()
    else:
        await asyncio.gather(*(one() for _ in range(requests)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "backend": backend.name,
        "requests": requests,
        "admitted": admitted,
        "refused": dict(refused),
        "seconds": round(elapsed, 3),
        "reserve_ms_p50": round(statistics.median(latencies), 3) if latencies else None,
        "reserve_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 3)
        if latencies
        else None,
    }


class Command(BaseCommand):
    help = "Concurrent admissions for one key; prints a JSON summary."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--key-id", type=int, required=True)
        parser.add_argument("--requests", type=int, default=200)
        parser.add_argument("--cost", default="0.0001")
        parser.add_argument("--no-settle", action="store_true")
        parser.add_argument("--start-at", type=float, default=0.0, help="unix time to start")
        parser.add_argument("--sequential", action="store_true", help="one request at a time")
        parser.add_argument(
            "--hold-seconds", type=float, default=0.0, help="wait between reserve and settle"
        )
        parser.add_argument(
            "--progress-tokens", type=int, default=0, help="checkpoint this output on each hold"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        ctx = context_for_key(opts["key_id"])
        result = async_to_sync(burst)(
            ctx,
            requests=opts["requests"],
            cost=Decimal(opts["cost"]),
            settle=not opts["no_settle"],
            start_at=opts["start_at"],
            sequential=opts["sequential"],
            hold_seconds=opts["hold_seconds"],
            progress_tokens=opts["progress_tokens"],
        )
        self.stdout.write(json.dumps(result))
