"""Realistic usage for scale tests and demos, then its rollups.

    manage.py seed_usage --rows 1000000 [--org scale] [--days 30] [--seed 7]

Spreads ``--rows`` usage records over the organization's API keys (a Zipf-like skew: a few
keys carry most traffic), over the catalog's priced chat models (cheap models most), over the
last ``--days`` days with a working-hours daily shape; about 2% failures, 3% fallbacks, 20%
cached prompts. Costs are exact (integer pico-dollars from the catalog price in force). Writes
with PostgreSQL ``COPY`` (psycopg ``cursor.copy``) in batches, or ``bulk_create`` on SQLite;
then rolls the organization's days up (``rollup_rebuild``). Prints JSON with timings.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from decimal import Decimal
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from billing.analytics.rollups import rollup_advance, rollup_rebuild
from billing.models import ROLLUP_MODELS, UsageRecord
from orgs.models import ApiKey, Organization
from routing.models import Model, ModelPrice

PICO = Decimal("1e12")
PREFERRED = (
    "openai/gpt-4o-mini",
    "openai/gpt-4o",
    "openai/gpt-4.1-mini",
    "anthropic/claude-sonnet-4-5",
    "gemini/gemini-2.5-flash",
    "gemini/gemini-2.5-pro",
    "mistral/mistral-small-latest",
    "deepseek/deepseek-chat",
)
STRATEGIES = np.array(["balanced", "cost", "latency", "availability"])
STATUSES = np.array(["ok", "upstream_error", "rate_limited", "timeout"])
# Share of requests by hour of day (UTC): quiet nights, busy working hours.
HOUR_SHAPE = np.array(
    [2, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 11, 10, 11, 12, 12, 11, 9, 7, 5, 4, 3, 3, 2], float
)
COLUMNS = (
    "request_id",
    "organization_id",
    "department_id",
    "team_id",
    "project_id",
    "member_id",
    "key_id",
    "requested_model",
    "model",
    "provider",
    "deployment",
    "strategy",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "cost",
    "latency_ms",
    "ttft_ms",
    "status",
    "attempts",
    "fallback_used",
    "routing",
    "budget_periods",
    "created_at",
    "recorded_at",
)


def _pico(value: Decimal | None) -> int:
    return int(value * PICO) if value is not None else 0


class Command(BaseCommand):
    help = "Generate realistic usage records for an organization (scale tests) and roll them up."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--rows", type=int, required=True)
        parser.add_argument("--org", default="scale")
        parser.add_argument("--days", type=int, default=30)
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--batch", type=int, default=100_000)
        parser.add_argument("--models", type=int, default=8)
        parser.add_argument("--no-rollup", action="store_true")

    def handle(self, *args: Any, **o: Any) -> None:
        if o["rows"] < 1 or o["days"] < 1:
            raise CommandError("--rows and --days must be positive")
        org = Organization.objects.filter(slug=o["org"]).first()
        if org is None:
            raise CommandError(
                f"no organization {o['org']!r} (create it: manage.py seed_scale_org)"
            )
        keys = list(
            ApiKey.objects.filter(organization=org).values_list(
                "pk", "membership_id", "project__path"
            )
        )
        if not keys:
            raise CommandError(f"organization {org.slug!r} has no API keys")
        models = self._models(o["models"])
        rng = np.random.default_rng(o["seed"])
        end = timezone.now().replace(minute=0, second=0, microsecond=0)
        start = end - dt.timedelta(days=o["days"])
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        rollup_advance(lag_seconds=0, max_batches=10_000)  # nothing else waits when we jump
        key_arr = self._keys(keys)
        run = secrets.token_hex(4)
        written = 0
        while written < o["rows"]:
            n = min(o["batch"], o["rows"] - written)
            rows = self._batch(rng, n, written, run, org.pk, key_arr, models, start, o["days"])
            self._write(rows, n)
            written += n
            self.stderr.write(f"{written} rows")
        timings["insert_s"] = round(time.perf_counter() - t0, 2)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE billing_usagerecord")
        result: dict[str, Any] = {"organization": org.slug, "rows": written, "keys": len(keys)}
        if not o["no_rollup"]:
            t1 = time.perf_counter()
            top = UsageRecord.objects.aggregate(m=Max("id"))["m"] or 0
            result["rollup_rows"] = rollup_rebuild(
                organization_id=org.pk, start=start, end=end, advance_to=top
            )
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    for model in ROLLUP_MODELS:  # fresh statistics: hash aggregates
                        cursor.execute(f"ANALYZE {model._meta.db_table}")
            timings["rollup_s"] = round(time.perf_counter() - t1, 2)
        result.update(timings)
        result["models"] = [m["id"] for m in models]
        self.stdout.write(json.dumps(result))

    def _models(self, limit: int) -> list[dict[str, Any]]:
        now = timezone.now()
        priced = {
            p.model.canonical_id: p
            for p in ModelPrice.objects.filter(effective_from__lte=now, model__mode="chat")
            .select_related("model", "model__provider")
            .order_by("effective_from")
        }
        ids = [m for m in PREFERRED if m in priced]
        if len(ids) < limit:
            extra = sorted(
                (m for m in priced if m not in ids and priced[m].input_per_token > 0),
                key=lambda m: (priced[m].input_per_token, m),
            )
            ids += extra[: limit - len(ids)]
        if not ids:
            raise CommandError(
                "the catalog has no priced chat models: run manage.py catalog_import"
            )
        ids = ids[:limit]
        out: list[dict[str, Any]] = []
        for canonical in ids:
            p = priced[canonical]
            out.append(
                {
                    "id": canonical,
                    "provider": Model.objects.get(canonical_id=canonical).provider.slug,
                    "in": _pico(p.input_per_token),
                    "cached": _pico(
                        p.cached_input_per_token
                        if p.cached_input_per_token is not None
                        else p.input_per_token
                    ),
                    "out": _pico(p.output_per_token),
                }
            )
        # cheap models carry most requests
        out.sort(key=lambda m: m["in"])
        return out

    def _keys(self, keys: list[tuple[int, int, str]]) -> np.ndarray:
        rows = []
        for key_id, member_id, path in keys:
            parts = [int(x) for x in path.strip("/").split("/")]
            dept, team, project = [*parts, 0, 0, 0, 0][1:4]
            rows.append((key_id, member_id, dept, team, project))
        return np.array(rows, dtype=np.int64)

    def _batch(
        self,
        rng: np.random.Generator,
        n: int,
        offset: int,
        run: str,
        org_id: int,
        keys: np.ndarray,
        models: list[dict[str, Any]],
        start: dt.datetime,
        days: int,
    ) -> list[tuple[Any, ...]]:
        k = len(keys)
        ranks = np.arange(1, k + 1, dtype=float)
        key_idx = rng.choice(k, size=n, p=(w := ranks**-1.07) / w.sum())
        m = len(models)
        model_idx = rng.choice(
            m, size=n, p=(mw := np.arange(m, 0, -1, dtype=float) ** 2) / mw.sum()
        )
        day = rng.integers(0, days, size=n)
        hour = rng.choice(24, size=n, p=HOUR_SHAPE / HOUR_SHAPE.sum())
        seconds = day * 86400 + hour * 3600 + rng.integers(0, 3600, size=n)
        tin = np.clip(rng.lognormal(6.5, 1.0, size=n), 5, 120_000).astype(np.int64)
        tout = np.clip(rng.lognormal(5.3, 0.9, size=n), 1, 16_000).astype(np.int64)
        cached = np.where(rng.random(n) < 0.2, tin // 2, 0)
        status_idx = rng.choice(4, size=n, p=[0.98, 0.01, 0.006, 0.004])
        tout = np.where(status_idx == 0, tout, 0)
        fallback = rng.random(n) < 0.03
        latency = np.clip(rng.lognormal(6.3, 0.6, size=n), 40, 120_000).astype(np.int64)
        ttft = (latency * rng.uniform(0.1, 0.5, size=n)).astype(np.int64)
        p_in = np.array([x["in"] for x in models], dtype=np.int64)[model_idx]
        p_cached = np.array([x["cached"] for x in models], dtype=np.int64)[model_idx]
        p_out = np.array([x["out"] for x in models], dtype=np.int64)[model_idx]
        cost_pico = (tin - cached) * p_in + cached * p_cached + tout * p_out
        strategy_idx = (keys[key_idx, 0] * 2654435761) % 4
        chosen = keys[key_idx]
        base = start.timestamp()
        rows = []
        names = [x["id"] for x in models]
        providers = [x["provider"] for x in models]
        for i in range(n):
            q, r = divmod(int(cost_pico[i]), 10**12)
            created = dt.datetime.fromtimestamp(base + int(seconds[i]), tz=dt.UTC)
            mi = int(model_idx[i])
            rows.append(
                (
                    f"seed-{run}-{offset + i}",
                    org_id,
                    int(chosen[i, 2]) or None,
                    int(chosen[i, 3]) or None,
                    int(chosen[i, 4]) or None,
                    int(chosen[i, 1]),
                    int(chosen[i, 0]),
                    names[mi],
                    names[mi],
                    providers[mi],
                    "",
                    str(STRATEGIES[strategy_idx[i]]),
                    int(tin[i]),
                    int(tout[i]),
                    int(cached[i]),
                    f"{q}.{r:012d}",
                    int(latency[i]),
                    int(ttft[i]),
                    str(STATUSES[status_idx[i]]),
                    2 if fallback[i] else 1,
                    bool(fallback[i]),
                    "{}",
                    "[]",  # seeded history was admitted against no budget
                    created,
                    created + dt.timedelta(seconds=2),
                )
            )
        return rows

    def _write(self, rows: list[tuple[Any, ...]], n: int) -> None:
        if connection.vendor == "postgresql":
            with transaction.atomic(), connection.cursor() as cursor:
                raw = cursor.cursor  # the psycopg cursor
                columns = ", ".join(COLUMNS)
                with raw.copy(f"COPY billing_usagerecord ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            return
        objs = []
        for row in rows:
            values = dict(zip(COLUMNS, row, strict=True))
            values["routing"] = {}
            values["budget_periods"] = []
            values["cost"] = Decimal(values["cost"])
            objs.append(UsageRecord(**values))
        UsageRecord.objects.bulk_create(objs, batch_size=2000)
