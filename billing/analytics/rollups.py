"""Rollup maintenance: usage records -> hourly and daily sums, exactly once.

- ``rollup_advance()`` (Celery ``billing.analytics_rollup``, every few seconds, and called by
  ``seed_usage``) takes the records above the watermark, adds them to every rollup table and
  moves the watermark, all in one transaction under the watermark's row lock: a second run, a
  concurrent run or a retry after a crash cannot add a record twice.
- ``rollup_apply(records)`` is the pure "add these records" step it uses. Call it only under the
  watermark lock (through ``rollup_advance``); other code that just wrote records (the usage
  event task) calls ``rollup_advance()``.
- ``rollup_rebuild(organization_id=, start=, end=)`` recomputes whole UTC days from the records
  (set-based SQL) for records at or below the watermark: repairs and bulk loads.

Records committed out of id order: PostgreSQL can commit id 100 after id 101. The watermark
only takes records recorded at least ``ANALYTICS_ROLLUP_LAG`` seconds ago, so a batch that
committed late inside that window is still picked up; ``rollup_rebuild`` repairs anything older.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BigIntegerField, Case, Count, IntegerField, Q, Sum, Value, When
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone

from billing.analytics.reference import (
    AMOUNT_FIELD,
    ReferencePricer,
    effective_reference,
    reference_cost_expression,
    reference_model_column,
    reference_models_of,
)
from billing.models import (
    MEASURES,
    MONEY,
    ROLLUP_MODELS,
    RollupMeasures,
    RollupWatermark,
    UsageRecord,
)

UTC = dt.UTC
STREAM = "usage"
OK_STATUS = "ok"
RECORD_FIELDS = (
    "id",
    "organization_id",
    "created_at",
    "department_id",
    "team_id",
    "project_id",
    "member_id",
    "key_id",
    "model",
    "provider",
    "strategy",
    "status",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "cost",
    "cache_lost",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "fallback_used",
    "reference_model",
)


def bucket_of(when: dt.datetime, grain: str) -> dt.datetime:
    when = when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return when.replace(hour=0) if grain == "day" else when


def _measures(r: Any, reference_cost: Decimal) -> list[Any]:
    return [
        1,
        0 if r.status == OK_STATUS else 1,
        1 if r.fallback_used else 0,
        r.attempts or 0,
        r.tokens_in or 0,
        r.tokens_out or 0,
        r.tokens_cached or 0,
        r.cost,
        reference_cost,
        r.cache_lost,
        r.latency_ms or 0,
        0 if r.latency_ms is None else 1,
        r.ttft_ms or 0,
        0 if r.ttft_ms is None else 1,
    ]


def _dimension(r: Any, name: str, reference: str) -> Any:
    if name == "reference_model":
        return reference
    return getattr(r, name) or (0 if name.endswith("_id") else "")


def rollup_apply(records: Iterable[Any], *, pricer: ReferencePricer | None = None) -> int:
    """Add ``records`` (UsageRecord rows, or objects with the same attributes) to every rollup
    table. Not idempotent by itself: callers hold the watermark (``rollup_advance``)."""
    pricer = pricer or ReferencePricer()
    sums: dict[type[RollupMeasures], dict[tuple[Any, ...], list[Any]]] = {
        m: defaultdict(lambda: [0] * len(MEASURES)) for m in ROLLUP_MODELS
    }
    count = 0
    for r in records:
        count += 1
        reference = effective_reference(getattr(r, "reference_model", None))
        ref = pricer.cost(
            when=r.created_at,
            tokens_in=r.tokens_in or 0,
            tokens_out=r.tokens_out or 0,
            tokens_cached=r.tokens_cached or 0,
            actual=r.cost,
            model=reference,
        )
        values = _measures(r, ref)
        for model in ROLLUP_MODELS:
            key = (
                r.organization_id,
                bucket_of(r.created_at, model.GRAIN),
                *(_dimension(r, d, reference) for d in model.DIMS),
            )
            acc = sums[model][key]
            for i, v in enumerate(values):
                acc[i] += v
    for model, rows in sums.items():
        _upsert_add(model, rows)
    return count


def _upsert_add(model: type[RollupMeasures], rows: dict[tuple[Any, ...], list[Any]]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE SET m = m + excluded.m (PostgreSQL and SQLite)."""
    if not rows:
        return
    table = connection.ops.quote_name(model._meta.db_table)
    key_cols = ["organization_id", "bucket", *model.DIMS]
    cols = [*key_cols, *MEASURES]
    q = connection.ops.quote_name
    updates = ", ".join(f"{q(m)} = {table}.{q(m)} + excluded.{q(m)}" for m in MEASURES)
    adapt_dt = connection.ops.adapt_datetimefield_value
    adapt_dec = connection.ops.adapt_decimalfield_value
    cost_at = {MEASURES.index(m) for m in MONEY}
    params_rows = []
    for key, values in rows.items():
        org_id, bucket, *dims = key
        measures = [adapt_dec(v, 24, 12) if i in cost_at else v for i, v in enumerate(values)]
        params_rows.append([org_id, adapt_dt(bucket), *dims, *measures])
    per_row = "(" + ", ".join(["%s"] * len(cols)) + ")"
    chunk = max(1, 30000 // len(cols) // 2)
    with connection.cursor() as cursor:
        for i in range(0, len(params_rows), chunk):
            part = params_rows[i : i + chunk]
            # Identifiers come from the model, values are parameters.
            head = f"INSERT INTO {table} ({', '.join(q(c) for c in cols)}) VALUES "  # noqa: S608
            conflict = f" ON CONFLICT ({', '.join(q(c) for c in key_cols)}) DO UPDATE SET "
            sql = head + ", ".join([per_row] * len(part)) + conflict + updates
            cursor.execute(sql, [p for row in part for p in row])


def _watermark_locked() -> RollupWatermark:
    RollupWatermark.objects.get_or_create(name=STREAM)
    return RollupWatermark.objects.select_for_update().get(name=STREAM)


def rollup_advance(
    *, batch: int = 5000, max_batches: int = 20, lag_seconds: float | None = None
) -> int:
    """Add the records above the watermark (recorded at least ``lag_seconds`` ago) to the
    rollups and move the watermark; one transaction per batch. Returns records added."""
    lag = settings.ANALYTICS_ROLLUP_LAG if lag_seconds is None else lag_seconds
    pricer = ReferencePricer()
    total = 0
    for _ in range(max_batches):
        with transaction.atomic():
            mark = _watermark_locked()
            cutoff = timezone.now() - dt.timedelta(seconds=lag)
            records = list(
                UsageRecord.objects.filter(id__gt=mark.last_id, recorded_at__lte=cutoff)
                .order_by("id")
                .only(*RECORD_FIELDS)[:batch]
            )
            if not records:
                break
            rollup_apply(records, pricer=pricer)
            mark.last_id = records[-1].id
            mark.save(update_fields=["last_id", "updated_at"])
        total += len(records)
        if len(records) < batch:
            break
    return total


def rollup_watermark() -> int:
    return (
        RollupWatermark.objects.filter(name=STREAM).values_list("last_id", flat=True).first() or 0
    )


def _day_floor(when: dt.datetime) -> dt.datetime:
    return bucket_of(when, "day")


def rollup_rebuild(
    *,
    organization_id: int,
    start: dt.datetime,
    end: dt.datetime,
    advance_to: int | None = None,
) -> int:
    """Recompute the organization's rollups for the UTC days covering [start, end) from its
    records at or below the watermark. ``advance_to`` first moves the watermark to that id
    (bulk loads: every record up to it is then counted by the rebuild, never by
    ``rollup_advance``; only correct when no other records are waiting). Returns rollup rows."""
    start = _day_floor(start)
    end_floor = _day_floor(end)
    end = end_floor if end_floor == end else end_floor + dt.timedelta(days=1)
    written = 0
    with transaction.atomic():
        mark = _watermark_locked()
        if advance_to is not None and advance_to > mark.last_id:
            mark.last_id = advance_to
            mark.save(update_fields=["last_id", "updated_at"])
        records = UsageRecord.objects.filter(
            organization_id=organization_id,
            created_at__gte=start,
            created_at__lt=end,
            id__lte=mark.last_id,
        )
        # Each record on its own reference model: a CASE over the models these records hold.
        reference = reference_cost_expression(models=reference_models_of(records))
        for model in ROLLUP_MODELS:
            model._default_manager.filter(
                organization_id=organization_id, bucket__gte=start, bucket__lt=end
            ).delete()
            written += _insert_select(model, records, reference)
    return written


def _dimension_expression(name: str) -> Any:
    """A record column as the rollup stores it (the SQL form of ``_dimension``)."""
    if name == "reference_model":
        return reference_model_column()
    return Coalesce(name, Value(0)) if name.endswith("_id") else Coalesce(name, Value(""))


def _insert_select(model: type[RollupMeasures], records: Any, reference: Any) -> int:
    """INSERT INTO rollup (...) SELECT ... GROUP BY ...: the database does the whole pass."""
    trunc = TruncDay if model.GRAIN == "day" else TruncHour
    dims = {f"d_{d}": _dimension_expression(d) for d in model.DIMS}
    grouped = (
        records.annotate(b=trunc("created_at", tzinfo=UTC), **dims)
        .values("organization_id", "b", *dims)
        .annotate(**aggregate_expressions(reference))
        .order_by()
    )
    names = {"b": "bucket", **{f"d_{d}": d for d in model.DIMS}}
    names.update({f"s_{m}": m for m in MEASURES})
    selected = [*grouped.query.values_select, *grouped.query.annotation_select]
    columns = [names.get(c, c) for c in selected]
    assert sorted(columns) == sorted(["organization_id", "bucket", *model.DIMS, *MEASURES])
    sql, params = grouped.query.sql_with_params()
    q = connection.ops.quote_name
    insert = f"INSERT INTO {q(model._meta.db_table)} ({', '.join(q(c) for c in columns)}) "
    with connection.cursor() as cursor:
        cursor.execute(insert + sql, params)
        return cursor.rowcount


def aggregate_expressions(reference: Any) -> dict[str, Any]:
    """Rollup measures as aggregates over raw usage records, named ``s_<measure>`` (a name
    must not shadow the column it sums)."""
    exprs = {
        "requests": Count("id"),
        "errors": Sum(
            Case(When(~Q(status=OK_STATUS), then=Value(1)), default=Value(0)),
            output_field=IntegerField(),
        ),
        "fallbacks": Sum(
            Case(When(fallback_used=True, then=Value(1)), default=Value(0)),
            output_field=IntegerField(),
        ),
        "attempts": Sum("attempts"),
        "tokens_in": Sum("tokens_in"),
        "tokens_out": Sum("tokens_out"),
        "tokens_cached": Sum("tokens_cached"),
        "cost": Sum("cost"),
        "reference_cost": Sum(reference),
        "cache_lost": Sum("cache_lost"),
        "latency_ms_sum": Sum("latency_ms"),
        "latency_count": Count("latency_ms"),
        "ttft_ms_sum": Sum("ttft_ms"),
        "ttft_count": Count("ttft_ms"),
    }
    out: dict[str, Any] = {}
    for name, expr in exprs.items():
        if name in MONEY:
            out[f"s_{name}"] = Coalesce(expr, Value(Decimal(0)), output_field=AMOUNT_FIELD)
        else:
            out[f"s_{name}"] = Coalesce(expr, Value(0), output_field=BigIntegerField())
    return out
