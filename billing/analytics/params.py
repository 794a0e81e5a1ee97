"""Parse an analytics period, filters and grouping (query string or report request) into an
``AnalyticsQuery``. Raises ``InvalidInput`` naming the parameter."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from billing.analytics.selectors import (
    BUCKETS,
    DIMENSIONS,
    ID_DIMENSIONS,
    TAG_GROUP,
    AnalyticsQuery,
)
from billing.errors import InvalidInput

MAX_DAYS = 400
MAX_HOUR_BUCKET_DAYS = 31
DEFAULT_DAYS = 30
MAX_VALUES = 500


def _values(raw: Any) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for item in items:
        out.extend(v.strip() for v in str(item).split(",") if v.strip())
    return out


def _moment(raw: str, name: str, zone: zoneinfo.ZoneInfo, *, end: bool) -> dt.datetime:
    day = parse_date(raw) if len(raw) == 10 else None
    if day is not None:
        # A date is a whole local day: ``to`` includes it.
        day = day + dt.timedelta(days=1) if end else day
        return dt.datetime.combine(day, dt.time(), tzinfo=zone)
    try:
        moment = parse_datetime(raw)
    except ValueError:
        moment = None
    if moment is None:
        raise InvalidInput({name: "Use a date (2026-11-01) or an ISO 8601 date-time."})
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=zone)
    return moment


# A tag key as the gateway accepts it (gateway.wire.common.TAG_KEY; billing may not import it).
TAG_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]{0,62}[A-Za-z0-9])?")


def _tag_key_ok(key: str) -> bool:
    return TAG_KEY.fullmatch(key) is not None and "__" not in key


def _tag_pair(raw: str) -> str:
    key, sep, value = raw.partition("=")
    if not sep or not value or not _tag_key_ok(key):
        raise InvalidInput(
            {"tag": "Use key=value (tag=feature=search); keys of letters, digits, _ . : -."}
        )
    return raw


def _tag_group(name: str, dimensions: Mapping[str, str]) -> bool:
    return (
        "tag" in dimensions and name.startswith(TAG_GROUP) and _tag_key_ok(name[len(TAG_GROUP) :])
    )


def analytics_query_parse(
    params: Mapping[str, Any],
    *,
    time_zone: str,
    now: dt.datetime | None = None,
    dimensions: Mapping[str, str] = DIMENSIONS,
    whole_numbers: frozenset[str] = ID_DIMENSIONS,
) -> AnalyticsQuery:
    """``from`` / ``to`` (dates are whole days in the organization's zone, ``to`` included;
    or date-times) or ``days`` (the last N local days, today included; default 30);
    one parameter per dimension (comma-separated values); ``group_by`` (up to two
    dimensions, or ``tag:<key>``); ``bucket`` (hour | day). ``tag=key=value`` filters on request
    tags (every pair given must match). ``dimensions``: the usage figures' by default, the
    failed-request counts' (``FAILURE_DIMENSIONS``) for those; ``whole_numbers``: the ones
    whose values are integers."""
    zone = zoneinfo.ZoneInfo(time_zone)
    now = now or timezone.now()
    get = params.get
    if get("from") or get("to"):
        if not (get("from") and get("to")):
            raise InvalidInput({"from": "Give both from and to (or days)."})
        start = _moment(str(get("from")), "from", zone, end=False)
        end = _moment(str(get("to")), "to", zone, end=True)
    else:
        try:
            days = int(get("days") or DEFAULT_DAYS)
        except (TypeError, ValueError):
            raise InvalidInput({"days": "A whole number of days."}) from None
        if not 1 <= days <= MAX_DAYS:
            raise InvalidInput({"days": f"Between 1 and {MAX_DAYS}."})
        today = now.astimezone(zone).date()
        end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=zone)
        start = dt.datetime.combine(today - dt.timedelta(days=days - 1), dt.time(), tzinfo=zone)
    if end <= start:
        raise InvalidInput({"to": "The period must end after it starts."})
    if end - start > dt.timedelta(days=MAX_DAYS):
        raise InvalidInput({"from": f"The period is at most {MAX_DAYS} days."})

    filters: dict[str, list[Any]] = {}
    for name in dimensions:
        if get(name) in (None, ""):
            continue
        values = _values(params.getlist(name) if hasattr(params, "getlist") else get(name))
        if len(values) > MAX_VALUES:
            raise InvalidInput({name: f"At most {MAX_VALUES} values."})
        if name == "tag":
            filters[name] = [_tag_pair(v) for v in values]
        elif name in whole_numbers:
            try:
                filters[name] = [int(v) for v in values]
            except ValueError:
                noun = "Ids" if name in ID_DIMENSIONS else "Values"
                raise InvalidInput({name: f"{noun} are whole numbers."}) from None
        else:
            filters[name] = values

    group_by = tuple(_values(get("group_by") or []))
    unknown = [g for g in group_by if g not in dimensions and not _tag_group(g, dimensions)]
    if unknown:
        raise InvalidInput(
            {"group_by": f"Unknown dimension {unknown[0]!r}; use {', '.join(dimensions)}."}
        )
    if len(group_by) > 2 or len(set(group_by)) != len(group_by):
        raise InvalidInput({"group_by": "Up to two different dimensions."})

    bucket = get("bucket") or None
    if bucket is not None and bucket not in BUCKETS:
        raise InvalidInput({"bucket": "hour or day."})
    if bucket == "hour" and end - start > dt.timedelta(days=MAX_HOUR_BUCKET_DAYS):
        raise InvalidInput({"bucket": f"Hour buckets cover at most {MAX_HOUR_BUCKET_DAYS} days."})
    return AnalyticsQuery(
        start=start,
        end=end,
        filters=filters,
        group_by=group_by,
        bucket=bucket,
        time_zone=time_zone,
    )
