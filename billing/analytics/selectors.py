"""Analytics reads: totals, breakdowns (up to two dimensions) and time series.

Every function takes a queryset already restricted to the caller's organization and visible
subtree (the API gets it from ``OrgScopedViewSet.get_queryset``; reports from
``scoped_source``) plus an ``AnalyticsQuery``. ``analytics_source`` picks the cheapest table
that answers the query exactly:

1. ``UsageRollupDayTeam`` (UTC days; department, team, model, provider),
2. ``UsageRollupDayNode`` (UTC days; and project),
3. ``UsageRollupDay`` (UTC days; every dimension),
4. ``UsageRollupHour`` (hours; department, team, model, provider),
5. ``UsageRecord`` (any range, any dimension).

Day tables need the period on UTC midnights and, for day buckets, an organization whose days are
UTC days; the hour table needs whole hours. Sums over rollups equal sums over the records.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import F, Model, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import TruncDay, TruncHour

from billing.analytics.reference import (
    reference_cost_expression,
    reference_model,
    reference_model_column,
    reference_model_q,
    reference_models_of,
)
from billing.analytics.rollups import aggregate_expressions
from billing.models import MEASURES, MONEY, ROLLUP_MODELS, UsageRecord
from orgs.models import ApiKey, Membership, Node

# API name -> column (the same on rollups and records).
DIMENSIONS: dict[str, str] = {
    "department": "department_id",
    "team": "team_id",
    "project": "project_id",
    "member": "member_id",
    "key": "key_id",
    "model": "model",
    "provider": "provider",
    "strategy": "strategy",
    "status": "status",
    "reference_model": "reference_model",
    # request tags: filter ``tag=feature=search`` (every pair must match), group by
    # ``tag:feature``; raw records only (the rollups do not hold tags)
    "tag": "tags",
}
TAG_GROUP = "tag:"
ID_DIMENSIONS = frozenset({"department", "team", "project", "member", "key"})
# The failed-request counts' dimensions (billing.models.FailedRequestCount): ``status`` is the
# HTTP status answered there (a number), ``code`` the error object's code.
FAILURE_DIMENSIONS: dict[str, str] = {
    "department": "department_id",
    "team": "team_id",
    "project": "project_id",
    "member": "member_id",
    "key": "key_id",
    "model": "model",
    "provider": "provider",
    "status": "status",
    "code": "code",
}
FAILURE_WHOLE_NUMBERS = ID_DIMENSIONS | {"status"}
BUCKETS = ("hour", "day")
UTC = dt.UTC


@dataclass(frozen=True)
class AnalyticsQuery:
    start: dt.datetime  # inclusive
    end: dt.datetime  # exclusive
    filters: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # dimension -> values
    group_by: tuple[str, ...] = ()
    bucket: str | None = None  # "hour" | "day" for a time series
    time_zone: str = "UTC"

    @property
    def dimensions(self) -> set[str]:
        return {DIMENSIONS.get(d, "tags") for d in (*self.filters, *self.group_by)}


def period_days(query: AnalyticsQuery) -> list[dt.date]:
    """The local days a query's period covers, first to last (the last one included): the
    x axis of the console's charts and the PDF's."""
    zone = zoneinfo.ZoneInfo(query.time_zone)
    first = query.start.astimezone(zone).date()
    last = (query.end - dt.timedelta(microseconds=1)).astimezone(zone).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _is_utc_zone(name: str) -> bool:
    zone = zoneinfo.ZoneInfo(name)
    return name in ("UTC", "Etc/UTC", "Etc/GMT", "GMT") or zone.utcoffset(
        dt.datetime(2026, 1, 1)
    ) == dt.timedelta(0) == zone.utcoffset(dt.datetime(2026, 7, 1))


def _whole_hour_zone(query: AnalyticsQuery) -> bool:
    zone = zoneinfo.ZoneInfo(query.time_zone)
    offsets = (
        zone.utcoffset(query.start.replace(tzinfo=None)),
        zone.utcoffset(query.end.replace(tzinfo=None)),
    )
    return all(o is not None and o.total_seconds() % 3600 == 0 for o in offsets)


def _aligned(when: dt.datetime, grain: str) -> bool:
    w = when.astimezone(UTC)
    aligned = w.minute == 0 and w.second == 0 and w.microsecond == 0
    return aligned and (grain == "hour" or w.hour == 0)


def analytics_source(query: AnalyticsQuery, *, scope_column: str | None = None) -> type[Model]:
    """The smallest table that answers ``query`` exactly. ``scope_column`` is the column the
    caller's visibility is filtered on (``team_id`` / ``project_id``), when not org-wide."""
    dims = query.dimensions | ({scope_column} if scope_column else set())
    day_ok = (
        query.bucket != "hour"
        and _aligned(query.start, "day")
        and _aligned(query.end, "day")
        and (query.bucket != "day" or _is_utc_zone(query.time_zone))
    )
    hour_ok = _aligned(query.start, "hour") and _aligned(query.end, "hour")
    if query.bucket == "day" and not _whole_hour_zone(query):
        hour_ok = False  # local days of a +05:30 zone do not start on UTC hours
    for model in ROLLUP_MODELS:
        fits = day_ok if model.GRAIN == "day" else hour_ok
        if fits and dims <= set(model.DIMS):
            return model
    return UsageRecord


def node_scope_column(node: Node) -> str | None:
    """The rollup column that selects ``node``'s subtree (None: the whole organization)."""
    return {"department": "department_id", "team": "team_id", "project": "project_id"}.get(
        node.kind
    )


def _time_field(source: type[Model]) -> str:
    return "created_at" if source is UsageRecord else "bucket"


def _aggregates(filtered: QuerySet[Any], reference_models: Sequence[str] | None) -> dict[str, Any]:
    """Sums of the rollup measures; over raw records, each record's reference cost on its own
    reference model (``reference_models``: the ones ``filtered`` holds; found when None)."""
    if filtered.model is UsageRecord:
        models = reference_models_of(filtered) if reference_models is None else reference_models
        return aggregate_expressions(reference_cost_expression(models=models))
    return {f"s_{m}": Sum(m) for m in MEASURES}


def analytics_records(qs: QuerySet[Any], query: AnalyticsQuery) -> QuerySet[Any]:
    """The usage records ``query`` covers (its period and filters) among ``qs``: what the CSV
    export and the console's request list show, read with the same filters as the figures."""
    return _filtered(qs, query, UsageRecord)


def _filtered(qs: QuerySet[Any], query: AnalyticsQuery, source: type[Model]) -> QuerySet[Any]:
    tf = _time_field(source)
    qs = qs.filter(**{f"{tf}__gte": query.start, f"{tf}__lt": query.end})
    for name, values in query.filters.items():
        if name == "tag":
            qs = _tags_filtered(qs, values)
        elif name == "reference_model" and source is UsageRecord:
            qs = qs.filter(reference_model_q(values))  # "": the default
        else:
            qs = qs.filter(**{f"{DIMENSIONS[name]}__in": list(values)})
    return qs


def _tags_filtered(qs: QuerySet[Any], pairs: Sequence[str]) -> QuerySet[Any]:
    for pair in pairs:  # "key=value", checked by the parser
        key, _, value = pair.partition("=")
        qs = qs.filter(**{f"tags__{key}": value})
    return qs


def _group_column(name: str, source: type[Model]) -> Any:
    if name == "reference_model" and source is UsageRecord:
        return reference_model_column()  # "": the default, as the rollups store it
    if name.startswith(TAG_GROUP):
        return KT(f"tags__{name[len(TAG_GROUP) :]}")  # "" ... None: the record has no such tag
    return F(DIMENSIONS[name])


def _alias(dimension: str) -> str:
    return "g_" + dimension.replace(":", "_").replace(".", "_").replace("-", "_")


def _group_columns(query: AnalyticsQuery, source: type[Model]) -> dict[str, Any]:
    return {_alias(d): _group_column(d, source) for d in query.group_by}


def analytics_reference_models(qs: QuerySet[Any], query: AnalyticsQuery) -> list[str]:
    """The reference models the savings of ``query`` are measured against, sorted (one query,
    on the same table as the figures)."""
    source = qs.model
    filtered = _filtered(qs, query, source)
    if source is UsageRecord:
        return reference_models_of(filtered)
    return list(
        filtered.order_by("reference_model").values_list("reference_model", flat=True).distinct()
    )


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if not k.startswith("s_")}
    for m in MEASURES:
        v = row.get(f"s_{m}")
        out[m] = (Decimal(0) if m in MONEY else 0) if v is None else v
    for m in MEASURES:
        out[m] = Decimal(out[m]) if m in MONEY else int(out[m])
    out["savings"] = out["reference_cost"] - out["cost"]
    # net of the cached-input discount given up by moving conversations off their cache
    out["savings_net"] = out["savings"] - out["cache_lost"]
    out["avg_latency_ms"] = (
        round(out["latency_ms_sum"] / out["latency_count"], 1) if out["latency_count"] else None
    )
    out["avg_ttft_ms"] = (
        round(out["ttft_ms_sum"] / out["ttft_count"], 1) if out["ttft_count"] else None
    )
    return out


def analytics_totals(
    qs: QuerySet[Any], query: AnalyticsQuery, *, reference_models: Sequence[str] | None = None
) -> dict[str, Any]:
    filtered = _filtered(qs, query, qs.model)
    row = filtered.aggregate(**_aggregates(filtered, reference_models))
    return _finish(row)


def analytics_breakdown(
    qs: QuerySet[Any],
    query: AnalyticsQuery,
    *,
    limit: int = 1000,
    reference_models: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows grouped by ``query.group_by`` (one or two dimensions), dearest first."""
    source = qs.model
    cols = _group_columns(query, source)
    filtered = _filtered(qs, query, source)
    rows = (
        filtered.annotate(**cols)
        .values(*cols)
        .annotate(**_aggregates(filtered, reference_models))
        .order_by("-s_cost", *cols)[:limit]
    )
    return [_rename(_finish(r), query.group_by) for r in rows]


def analytics_timeseries(
    qs: QuerySet[Any], query: AnalyticsQuery, *, reference_models: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per bucket (and per group, when grouped), oldest first."""
    source = qs.model
    zone = zoneinfo.ZoneInfo(query.time_zone)
    trunc = TruncHour if query.bucket == "hour" else TruncDay
    cols = _group_columns(query, source)
    filtered = _filtered(qs, query, source)
    rows = (
        filtered.annotate(t=trunc(_time_field(source), tzinfo=zone), **cols)
        .values("t", *cols)
        .annotate(**_aggregates(filtered, reference_models))
        .order_by("t", *cols)
    )
    return [_rename(_finish(r), query.group_by) for r in rows]


def _failures_filtered(qs: QuerySet[Any], query: AnalyticsQuery) -> QuerySet[Any]:
    qs = qs.filter(hour__gte=query.start, hour__lt=query.end)
    for name, values in query.filters.items():
        qs = qs.filter(**{f"{FAILURE_DIMENSIONS[name]}__in": list(values)})
    return qs


def failures_totals(qs: QuerySet[Any], query: AnalyticsQuery) -> dict[str, Any]:
    """Requests that did not succeed over ``query``'s period (hours: the counts are hourly):
    ``failed`` in all, ``charged`` of them (streams cut short, which a usage record charged),
    and by HTTP status. ``qs``: ``FailedRequestCount`` rows already scoped to the caller."""
    filtered = _failures_filtered(qs, query)
    by_status = {
        str(row["status"]): int(row["n"])
        for row in filtered.values("status").annotate(n=Sum("count")).order_by("status")
    }
    charged = filtered.filter(charged=True).aggregate(n=Sum("count"))["n"] or 0
    return {"failed": sum(by_status.values()), "charged": int(charged), "by_status": by_status}


def failures_breakdown(
    qs: QuerySet[Any], query: AnalyticsQuery, *, limit: int = 1000
) -> list[dict[str, Any]]:
    """Counts grouped by ``query.group_by`` (one or two failure dimensions), most first."""
    cols = {_alias(d): F(FAILURE_DIMENSIONS[d]) for d in query.group_by}
    rows = (
        _failures_filtered(qs, query)
        .annotate(**cols)
        .values(*cols)
        .annotate(failed=Sum("count"))
        .order_by("-failed", *cols)[:limit]
    )
    return [_rename({**r, "failed": int(r["failed"])}, query.group_by) for r in rows]


def failures_hourly(
    qs: QuerySet[Any], query: AnalyticsQuery, dimension: str
) -> dict[tuple[Any, dt.datetime], dict[str, int]]:
    """``{(value, hour): {"failed": n, "charged": m}}`` by one dimension and UTC hour (the
    health page's sparklines beside the usage time series)."""
    column = FAILURE_DIMENSIONS[dimension]
    out: dict[tuple[Any, dt.datetime], dict[str, int]] = {}
    rows = _failures_filtered(qs, query).values(column, "hour", "charged").annotate(n=Sum("count"))
    for r in rows:
        cell = out.setdefault((r[column], r["hour"]), {"failed": 0, "charged": 0})
        cell["failed"] += int(r["n"])
        if r["charged"]:
            cell["charged"] += int(r["n"])
    return out


def failure_share(requests: int, failures: Mapping[str, Any]) -> Decimal | None:
    """The percentage of requests that did not succeed: failed over every request made (the
    charged ones, which are usage records too, counted once). None without requests."""
    # max: the charged ones reach the rollups' request count some seconds after their count
    made = max(requests + failures["failed"] - failures["charged"], failures["failed"])
    if not made:
        return None
    return (Decimal(failures["failed"]) / made * 100).quantize(Decimal("0.1"))


def _rename(row: dict[str, Any], group_by: tuple[str, ...]) -> dict[str, Any]:
    for d in group_by:
        value = row.pop(_alias(d))
        if d in ID_DIMENSIONS:
            value = value or None  # rollups store "none" as 0
        row[d] = value
    return row


def dimension_labels(
    organization_id: int, rows: list[dict[str, Any]], group_by: tuple[str, ...]
) -> dict[str, dict[Any, str]]:
    """Names for the ids in ``rows``: nodes, keys and members of the organization (one query
    per id dimension)."""
    labels: dict[str, dict[Any, str]] = {}
    for d in group_by:
        if d not in ID_DIMENSIONS:
            continue
        ids = {r[d] for r in rows if r.get(d)}
        if not ids:
            labels[d] = {}
        elif d == "key":
            labels[d] = dict(
                ApiKey.objects.filter(organization_id=organization_id, pk__in=ids).values_list(
                    "pk", "name"
                )
            )
        elif d == "member":
            labels[d] = dict(
                Membership.objects.filter(organization_id=organization_id, pk__in=ids).values_list(
                    "pk", "user__username"
                )
            )
        else:
            labels[d] = dict(
                Node.objects.filter(organization_id=organization_id, pk__in=ids).values_list(
                    "pk", "name"
                )
            )
    return labels


def scoped_queryset(source: type[Model], *, organization_id: int, node: Node) -> QuerySet[Any]:
    """``source`` rows of the organization inside ``node``'s subtree (reports and statements,
    where the scope was checked when the report was requested)."""
    qs = source._default_manager.filter(organization_id=organization_id)
    column = node_scope_column(node)
    if column is not None:
        qs = qs.filter(**{column: node.pk})
    return qs


def reference_model_name() -> str:
    """The default reference model (requests whose policy names none)."""
    return reference_model()
