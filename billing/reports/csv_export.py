"""CSV usage export in constant memory: a server-side cursor (``iterator(chunk_size)``) feeding
``csv.writer`` into a file; never a list of the rows."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.db.models import QuerySet

from billing.analytics.reference import ReferencePricer, effective_reference
from billing.analytics.selectors import AnalyticsQuery, analytics_records, scoped_queryset
from billing.models import Report, UsageRecord
from billing.reports.progress import report_progress

CHUNK = 5000
PROGRESS_EVERY = 50_000
COLUMNS = (
    "created_at",
    "request_id",
    "department_id",
    "team_id",
    "project_id",
    "member_id",
    "key_id",
    "requested_model",
    "model",
    "provider",
    "strategy",
    "status",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "cost_usd",
    "reference_model",
    "reference_cost_usd",
    "savings_usd",
    "cache_lost_usd",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "fallback_used",
    "tags",
)
_FIELDS = (
    "created_at",
    "request_id",
    "department_id",
    "team_id",
    "project_id",
    "member_id",
    "key_id",
    "requested_model",
    "model",
    "provider",
    "strategy",
    "status",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "cost",
    "cache_lost",
    "reference_model",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "fallback_used",
    "tags",
)


def usage_records_for(report: Report) -> QuerySet[UsageRecord]:
    qs = scoped_queryset(UsageRecord, organization_id=report.organization_id, node=report.node)
    query = AnalyticsQuery(
        start=report.period_start, end=report.period_end, filters=dict(report.filters or {})
    )
    return analytics_records(qs, query)


def usage_csv_rows(records: QuerySet[UsageRecord]) -> Iterator[tuple[Any, ...]]:
    """One CSV row (``COLUMNS``) per record, oldest first, from a server-side cursor: the
    report's file and the console's download write the same rows."""
    pricer = ReferencePricer()
    values = records.order_by("created_at", "id").values_list(*_FIELDS)
    for row in values.iterator(chunk_size=CHUNK):
        (created_at, request_id, dept, team, project, member, key, requested, model, provider,
         strategy, status, tin, tout, tcached, cost, cache_lost, reference_model, latency, ttft,
         attempts, fallback, tags) = row  # fmt: skip
        reference_model = effective_reference(reference_model)
        reference = pricer.cost(
            when=created_at,
            tokens_in=tin,
            tokens_out=tout,
            tokens_cached=tcached,
            actual=cost,
            model=reference_model,
        )
        yield (
            created_at.isoformat(),
            request_id,
            dept or "",
            team or "",
            project or "",
            member or "",
            key or "",
            requested,
            model,
            provider,
            strategy,
            status,
            tin,
            tout,
            tcached,
            f"{cost:.12f}",
            reference_model,
            f"{reference:.12f}",
            f"{reference - cost:.12f}",
            f"{cache_lost:.12f}",
            "" if latency is None else latency,
            "" if ttft is None else ttft,
            attempts,
            "true" if fallback else "false",
            _tags_text(tags),
        )


def _tags_text(tags: Any) -> str:
    """``feature=search;user=u-42``, keys sorted ("" without tags): one cell a spreadsheet can
    split; the header form of the tags, with ';' (values may hold commas)."""
    if not tags:
        return ""
    return ";".join(f"{k}={v}" for k, v in sorted(tags.items()))


def usage_csv_write(*, report: Report, path: Path) -> int:
    """Write the report's usage records to ``path``; returns the number of data rows."""
    records = usage_records_for(report)
    total = records.count()
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in usage_csv_rows(records):
            writer.writerow(row)
            rows += 1
            if rows % PROGRESS_EVERY == 0 and total:
                report_progress(report.pk, rows * 100 // total)
    return rows
