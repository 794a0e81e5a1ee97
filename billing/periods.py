"""Budget periods in the organization's time zone."""

from __future__ import annotations

import datetime as dt
import functools
from zoneinfo import ZoneInfo

LIFETIME_START = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def period_bounds(
    period: str, now: dt.datetime, time_zone: str
) -> tuple[dt.datetime, dt.datetime | None]:
    """[start, end) of the period containing ``now``, as aware UTC datetimes (end None for
    lifetime). Days start at local midnight, weeks on Monday, months on the 1st."""
    if period == "lifetime":
        return LIFETIME_START, None
    local = now.astimezone(_zone(time_zone))
    day = local.date()
    if period == "daily":
        start_day = day
        end_day = day + dt.timedelta(days=1)
    elif period == "weekly":
        start_day = day - dt.timedelta(days=day.weekday())
        end_day = start_day + dt.timedelta(days=7)
    elif period == "monthly":
        start_day = day.replace(day=1)
        end_day = (start_day + dt.timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    zone = _zone(time_zone)
    start = dt.datetime.combine(start_day, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    end = dt.datetime.combine(end_day, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    return start, end


def period_start(period: str, now: dt.datetime, time_zone: str) -> dt.datetime:
    return period_bounds(period, now, time_zone)[0]
