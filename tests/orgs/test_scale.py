"""The scale check: a 10,000-member organization in PostgreSQL.

Not part of ``make test`` (seeding takes ~10-20 s on a 2-core machine). Run it with:

    ORGS_SCALE_TEST=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/megarouter_orgs \\
        .venv/bin/pytest tests/orgs/test_scale.py -s
"""

from __future__ import annotations

import io
import json
import os
import time

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from orgs.keys import KeyResolver
from orgs.models import Membership

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("ORGS_SCALE_TEST") != "1", reason="set ORGS_SCALE_TEST=1 to run"
    ),
]


@pytest.mark.django_db
def test_scale_org_stays_fast():
    if connection.vendor != "postgresql":
        pytest.skip("the scale check runs on PostgreSQL")
    out = io.StringIO()
    started = time.perf_counter()
    call_command(
        "seed_scale_org", members=10_000, teams=500, projects=2_000, keys=20_000, stdout=out
    )
    seed_seconds = time.perf_counter() - started
    result = json.loads(out.getvalue())
    print(f"\nseed_scale_org: {seed_seconds:.1f} s, {result['grants']} grants")
    assert seed_seconds < 60

    resolver = KeyResolver()
    with CaptureQueriesContext(connection) as ctx:
        started = time.perf_counter()
        key = resolver.resolve_sync(result["sample_api_key"])
        cold_ms = (time.perf_counter() - started) * 1000
    assert len(ctx.captured_queries) <= 3
    print(f"key context, cold: {cold_ms:.2f} ms, {len(ctx.captured_queries)} query")
    assert key.project_id == result["sample_project"]

    owner = Membership.objects.get(organization_id=result["organization_id"], role="owner").user
    developer = Membership.objects.get(
        organization_id=result["organization_id"], user__username=result["developer_username"]
    ).user
    for label, user in (("owner", owner), ("developer", developer)):
        client = APIClient()
        client.force_authenticate(user)  # no session queries: only permissions + data
        for url in ("keys", "members", "nodes", "audit-events"):
            if label == "developer" and url == "audit-events":
                continue
            counts = []
            total = client.get(f"/api/orgs/scale/{url}/?limit=1").json()["count"]
            for offset in (0, total // 2, max(total - 50, 0)):
                with CaptureQueriesContext(connection) as ctx:
                    started = time.perf_counter()
                    response = client.get(f"/api/orgs/scale/{url}/?limit=50&offset={offset}")
                    ms = (time.perf_counter() - started) * 1000
                assert response.status_code == 200
                counts.append(len(ctx.captured_queries))
            print(
                f"{label} {url}: {counts} queries per page, last page {ms:.1f} ms, "
                f"count={response.json()['count']}"
            )
            # organization + permission + count + page, whatever the size or the offset
            assert counts == [4, 4, 4]
