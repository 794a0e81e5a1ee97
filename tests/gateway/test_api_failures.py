"""Requests that did not succeed are counted per key, model, provider, status and code, through
the real gateway (uvicorn, the simulator) and read back through the analytics API: a bad body
(400), an unknown model (404), a model the key may not use (403), a budget refusal (429),
every deployment failing (502), a stream the upstream cut (charged, counted as 502). Nothing
of the content is kept; another organization's counts are never visible."""

from __future__ import annotations

import asyncio
import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import orjson
import pytest
from django.db import connection
from rest_framework.test import APIClient

from billing.failures import FailureCounter, failure_key, failures_flush, reset_failures
from billing.models import FailedRequestCount
from tests.gateway import factories


@pytest.fixture(scope="module")
def counted(gateway_server, sim_world):
    """Every kind of failure once (and one success), then the counts the gateway wrote."""
    from billing import services as billing
    from orgs.audit import Actor

    world = sim_world
    refused_key = factories.api_key_create(world.tenant)
    from orgs.models import ApiKey
    from orgs.secrets import GATEWAY_KEY, prefix_of

    refused = ApiKey.objects.get(secrets__prefix=prefix_of(refused_key, GATEWAY_KEY))
    billing.budget_create(
        actor=Actor.system(),
        organization=world.tenant.organization,
        scope="key",
        scope_id=refused.pk,
        limit_usd=Decimal("0.000001"),
        period="monthly",
    )
    from tests.gateway.conftest import reset_caches

    reset_caches()

    def chat(model, key=world.key, **extra):
        body = {"model": model, "messages": [{"role": "user", "content": "canary-9f3 hi"}]}
        return http.post(
            "/v1/chat/completions",
            content=orjson.dumps({**body, **extra}),
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        )

    with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
        assert chat("openai/gpt-sim").status_code == 200
        bad = http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={**world.auth(), "content-type": "application/json"},
        )
        assert bad.status_code == 400
        assert chat("openai/no-such-model-canary").status_code == 404
        assert chat("anthropic/claude-sim", key=world.openai_only_key).status_code == 403
        assert chat("openai/gpt-sim", key=refused_key, max_tokens=4000).status_code == 429
        assert chat("openai/gpt-broken").status_code == 502  # a 503 and a 500
        cut = chat("openai/gpt-cutter", stream=True)
        assert cut.status_code == 200 and "stream_interrupted" in cut.text
        unauthenticated = http.post("/v1/chat/completions", content=b"{}")
        assert unauthenticated.status_code == 401
    return world, refused


def _rows(org):
    return list(
        FailedRequestCount.objects.filter(organization=org).values(
            "key_id", "model", "provider", "status", "code", "charged", "count"
        )
    )


def test_each_failure_is_counted_once_with_its_status_and_code(counted):
    world, refused = counted
    rows = _rows(world.tenant.organization)
    seen = {(r["status"], r["code"]): r for r in rows}
    assert set(seen) == {
        (400, "invalid_json"),
        (404, "model_not_found"),
        (403, "model_not_allowed"),
        (429, "budget_exceeded"),
        (502, "all_deployments_failed"),
        (502, "stream_interrupted"),
    }, rows
    assert all(r["count"] == 1 for r in rows)
    assert seen[(404, "model_not_found")]["model"] == ""  # the unknown name is not kept
    assert seen[(403, "model_not_allowed")]["key_id"] != refused.pk
    assert seen[(429, "budget_exceeded")]["key_id"] == refused.pk
    assert seen[(429, "budget_exceeded")]["model"] == "openai/gpt-sim"
    stream = seen[(502, "stream_interrupted")]
    assert (stream["model"], stream["provider"], stream["charged"]) == (
        "openai/gpt-cutter",
        "openai",
        True,
    )
    assert not any("canary" in str(v) for r in rows for v in r.values())


def test_the_analytics_api_reads_them_by_status_code_key_and_model(counted):
    world, refused = counted
    client = APIClient()
    client.force_login(world.tenant.membership.user)
    slug = world.tenant.organization.slug
    body = client.get(f"/api/orgs/{slug}/analytics/failures/", {"days": 1}).json()
    assert body["totals"]["failed"] == 6
    assert body["totals"]["charged"] == 1
    assert body["totals"]["by_status"]["429"] == 1
    grouped = client.get(
        f"/api/orgs/{slug}/analytics/failures/", {"days": 1, "group_by": "key,code"}
    ).json()
    mine = [r for r in grouped["rows"] if r["key"] == refused.pk]
    assert mine == [
        {"key": refused.pk, "key_name": refused.name, "code": "budget_exceeded", "failed": 1}
    ]
    refused_or_denied = client.get(
        f"/api/orgs/{slug}/analytics/failures/", {"days": 1, "status": "429,403"}
    ).json()
    assert refused_or_denied["totals"]["failed"] == 2
    by_model = client.get(
        f"/api/orgs/{slug}/analytics/failures/", {"days": 1, "group_by": "model"}
    ).json()
    assert {r["model"]: r["failed"] for r in by_model["rows"]}["openai/gpt-cutter"] == 1


def test_bad_parameters_are_field_errors(counted):
    world, _ = counted
    client = APIClient()
    client.force_login(world.tenant.membership.user)
    url = f"/api/orgs/{world.tenant.organization.slug}/analytics/failures/"
    response = client.get(url, {"status": "abc"})
    assert response.status_code == 400 and "status" in response.json()
    response = client.get(url, {"group_by": "strategy"})
    assert response.status_code == 400 and "group_by" in response.json()


def test_another_organization_sees_none_of_them(counted):
    other = factories.tenant_create()
    client = APIClient()
    client.force_login(other.membership.user)
    mine = client.get(
        f"/api/orgs/{other.organization.slug}/analytics/failures/", {"days": 1}
    ).json()
    assert mine["totals"]["failed"] == 0
    world, _ = counted
    theirs = client.get(f"/api/orgs/{world.tenant.organization.slug}/analytics/failures/")
    assert theirs.status_code == 404


@pytest.mark.django_db(transaction=True)
def test_counts_of_several_processes_add_up_in_one_row(settings):
    """Two counters (two gateway processes) flushing the same key-hour-code: one row whose
    count is the sum; a flush that cannot write keeps its counts for the next one."""
    from billing import failures

    tenant = factories.tenant_create()
    raw = factories.api_key_create(tenant)
    from orgs.keys import key_context_for_sync

    key = key_context_for_sync(raw)
    now = dt.datetime(2026, 12, 4, 10, 30, tzinfo=dt.UTC)
    failure = failure_key(key, model="auto", provider="", status=429, code="rate_limited", now=now)
    reset_failures()
    first, second = FailureCounter(), FailureCounter()
    for _ in range(3):
        first.add(failure)
    for _ in range(4):
        second.add(failure)
    for counter in (first, second):
        failures._counter.put_back(counter.take())
        assert failures_flush() == 1
    (row,) = FailedRequestCount.objects.filter(organization=tenant.organization)
    assert (row.count, row.hour, row.project_id) == (7, now.replace(minute=0), tenant.project.pk)


def test_the_flusher_writes_within_its_interval(settings, transactional_db):
    settings.BILLING_FAILURES_FLUSH_SECONDS = 0.05
    tenant = factories.tenant_create()
    from orgs.keys import key_context_for_sync

    key = key_context_for_sync(factories.api_key_create(tenant))
    from billing.failures import failure_record

    async def scenario():
        reset_failures()
        await failure_record(failure_key(key, model="", provider="", status=400, code="x"))
        rows = FailedRequestCount.objects.filter(organization=tenant.organization)
        assert not await rows.aexists()  # not written on the request path
        for _ in range(100):
            await asyncio.sleep(0.02)
            if await rows.aexists():
                return
        raise AssertionError("not flushed")

    asyncio.run(scenario())
    reset_failures()
    # the interval back to 0 (written before the response): the flusher thread ends
    from billing import failures

    settings.BILLING_FAILURES_FLUSH_SECONDS = 0
    thread = failures._flusher["thread"]
    thread.join(timeout=2)
    assert not thread.is_alive()


def test_the_usage_page_and_overview_show_the_api_figures(counted):
    """The console reads the same counts as the API: the usage page's stat and its tables by
    status and code and by key, and the overview's share of requests that did not succeed."""
    import re

    from django.test import Client
    from django.urls import reverse

    world, refused = counted
    client = Client()
    client.force_login(world.tenant.membership.user)
    slug = world.tenant.organization.slug
    page = client.get(reverse("console:usage", args=[slug]), {"days": 1}).content.decode()
    section = page[page.index('id="failures-h"') :]
    assert re.search(r'<div class="value">6</div><div class="label"><a href="#failures-h">', page)
    assert "budget_exceeded" in section and "stream_interrupted" in section
    assert reverse("console:key", args=[slug, refused.pk]) in section
    assert "(1 charged for what they relayed)" in section
    from billing.analytics.rollups import rollup_advance
    from billing.services import usage_events_post

    usage_events_post()
    rollup_advance(lag_seconds=0)
    overview = client.get(reverse("console:overview", args=[slug])).content.decode()
    # 1 success + 6 failures, one of which (the cut stream) is also a usage record: 6 of 7
    assert "6 did not succeed (85.7%)" in overview


def test_a_client_that_leaves_a_stream_is_counted_as_499(gateway_server, sim_world):
    import time

    world = sim_world
    body = {
        "model": "openai/gpt-slow",
        "stream": True,
        "messages": [{"role": "user", "content": "count slowly"}],
    }
    headers = {**world.auth(), "content-type": "application/json"}
    rows = FailedRequestCount.objects.filter(
        organization=world.tenant.organization, code="client_disconnect"
    )

    def total():
        # From a thread of its own (autocommit): a read inside the test's transaction would
        # hold SQLite's table lock and keep the server from writing the count.
        def read():
            try:
                return sum(r.count for r in rows.all())
            finally:
                connection.close()

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(read).result()

    before = total()
    with (
        httpx.Client(base_url=gateway_server.url, timeout=30) as http,
        http.stream(
            "POST", "/v1/chat/completions", content=orjson.dumps(body), headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        next(response.iter_bytes())  # the first event, then leave
    deadline = time.monotonic() + 10
    while total() == before:  # counted once the gateway sees it gone
        assert time.monotonic() < deadline, "the departed client was not counted"
        time.sleep(0.05)
    (row,) = rows.filter(model="openai/gpt-slow")
    assert (row.status, row.charged, row.provider) == (499, True, "openai")
