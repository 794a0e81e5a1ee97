"""Analytics figures at scale, on PostgreSQL (docs/performance.md, analytics section).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/megarouter_analytics \\
        .venv/bin/python bench/analytics.py --rows 10000000

Prepares the database once (migrate, catalog_import, ``seed_scale_org --slug scale``, then
``seed_usage`` up to ``--rows`` records in the scale organization) and measures:

- the 30-day dashboard: GET /api/orgs/scale/analytics/breakdown/?days=30&group_by=team,model
  (and summary, day series, top keys), through Django's test client as the owner, the whole
  request cycle including authentication, tenancy and permission subqueries;
- a CSV export of about ``--csv-rows`` records (the latest whole days that hold that many),
  built in this process exactly as the Celery task does, with the RSS sampled every 20 ms;
- a PDF report of the last 30 days for the whole organization (pages and seconds).

Prints JSON. Notes the load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Sum  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from billing.models import (  # noqa: E402
    Report,
    UsageRecord,
    UsageRollupDayNode,
)
from billing.reports.services import report_build  # noqa: E402
from orgs.models import Membership, Organization, Role  # noqa: E402
from orgs.selectors import root_node  # noqa: E402
from routing.models import Model  # noqa: E402

PAGE = 4096


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(rss_mb())
            time.sleep(0.02)


def prepare(rows: int) -> dict[str, object]:
    out: dict[str, object] = {}
    call_command("migrate", verbosity=0)
    if not Model.objects.exists():
        call_command("catalog_import", verbosity=0)
    if not Organization.objects.filter(slug="scale").exists():
        t = time.perf_counter()
        call_command("seed_scale_org", slug="scale")
        out["seed_scale_org_s"] = round(time.perf_counter() - t, 1)
    have = UsageRecord.objects.filter(organization__slug="scale").count()
    if have < rows:
        t = time.perf_counter()
        call_command("seed_usage", rows=rows - have, org="scale", days=30)
        out["seed_usage_s"] = round(time.perf_counter() - t, 1)
    return out


def timed_get(client: Client, url: str, repeat: int) -> dict[str, object]:
    times = []
    body = None
    for _ in range(repeat):
        t = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200, response.content[:300]
        body = response.json()
    return {
        "url": url,
        "first_ms": round(times[0], 1),
        "median_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "source": body.get("source") if body else None,
        "rows": len(body.get("rows") or body.get("points") or []) if body else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--csv-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--skip", default="", help="comma list of: dashboard,csv,pdf")
    args = parser.parse_args()
    assert connection.vendor == "postgresql", "run with DATABASE_URL=postgres://..."
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, object] = {"load_average_start": os.getloadavg()}
    result.update(prepare(args.rows))
    org = Organization.objects.get(slug="scale")
    result["usage_records_in_org"] = UsageRecord.objects.filter(organization=org).count()
    result["usage_records_total"] = UsageRecord.objects.count()
    owner = Membership.objects.filter(organization=org, role=Role.OWNER).first().user
    client = Client()
    client.force_login(owner)

    # the process's first request pays for URL resolution, imports and the session: not ours
    assert client.get("/api/orgs/scale/billing/balance/").status_code == 200
    if "dashboard" not in skip:
        base = "/api/orgs/scale/analytics"
        result["dashboard"] = [
            timed_get(client, f"{base}/breakdown/?days=30&group_by=team,model", args.repeat),
            timed_get(client, f"{base}/summary/?days=30", args.repeat),
            timed_get(client, f"{base}/timeseries/?days=30&bucket=day&group_by=model", args.repeat),
            timed_get(client, f"{base}/breakdown/?days=30&group_by=key", args.repeat),
            timed_get(client, f"{base}/timeseries/?days=2&bucket=hour", args.repeat),
        ]

    root = root_node(org)
    if "csv" not in skip:
        # the latest whole days holding about --csv-rows records
        days = list(
            UsageRollupDayNode.objects.filter(organization=org)
            .values("bucket")
            .annotate(n=Sum("requests"))
            .order_by("-bucket")
        )
        picked, count = [], 0
        for d in days:
            picked.append(d["bucket"])
            count += d["n"]
            if count >= args.csv_rows:
                break
        start, end = min(picked), max(picked) + dt.timedelta(days=1)
        report = Report.objects.create(
            organization=org, node=root, kind="csv", period_start=start, period_end=end
        )
        sampler = RssSampler()
        before = rss_mb()
        sampler.start()
        t = time.perf_counter()
        report = report_build(report_id=report.pk)
        seconds = time.perf_counter() - t
        sampler.stop.set()
        sampler.join()
        samples = sampler.samples
        result["csv"] = {
            "rows": report.rows,
            "seconds": round(seconds, 1),
            "rows_per_s": round(report.rows / seconds),
            "size_mb": round(report.size_bytes / 2**20, 1),
            "rss_mb_before": round(before, 1),
            "rss_mb_peak": round(max(samples), 1),
            "rss_mb_at_10pct": round(samples[len(samples) // 10], 1),
            "rss_mb_at_90pct": round(samples[len(samples) * 9 // 10], 1),
        }

    if "pdf" not in skip:
        end = timezone.now().replace(minute=0, second=0, microsecond=0)
        end = end.replace(hour=0) + dt.timedelta(days=1)
        report = Report.objects.create(
            organization=org,
            node=root,
            kind="pdf",
            period_start=end - dt.timedelta(days=30),
            period_end=end,
        )
        t = time.perf_counter()
        report = report_build(report_id=report.pk)
        result["pdf"] = {
            "pages": report.pages,
            "seconds": round(time.perf_counter() - t, 1),
            "size_kb": round(report.size_bytes / 1024),
        }
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
