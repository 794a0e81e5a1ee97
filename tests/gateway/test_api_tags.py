"""Request tags, end to end: the x-megarouter-tags header, OpenAI's metadata and Anthropic's
metadata.user_id reach the usage record (OpenAI's free-text user does not) (metadata only, bounded), analytics
filter and group on them, the CSV carries them; a bad header is the format's own 400; another
organization's records never count."""

from __future__ import annotations

import httpx
import orjson
import pytest
from rest_framework.test import APIClient

from billing.models import UsageRecord
from tests.gateway import factories


def _post(http, path, body, world, headers=None, key=None):
    return http.post(
        path,
        content=orjson.dumps(body),
        headers={
            "authorization": f"Bearer {key or world.key}",
            "content-type": "application/json",
            **(headers or {}),
        },
    )


CHAT = {"model": "openai/gpt-sim", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture(scope="module")
def tagged(gateway_server, sim_world):
    from billing.services import usage_events_post

    world = sim_world
    ids = {}
    with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
        r = _post(
            http,
            "/v1/chat/completions",
            {**CHAT, "metadata": {"team": "ml"}, "user": "u-42"},
            world,
            headers={"x-megarouter-tags": "feature=search, env=prod"},
        )
        assert r.status_code == 200, r.text
        ids["openai"] = r.headers["x-megarouter-usage-id"]
        r = _post(http, "/v1/chat/completions", CHAT, world, {"x-megarouter-tags": "feature=chat"})
        ids["chat"] = r.headers["x-megarouter-usage-id"]
        r = _post(
            http,
            "/v1/messages",
            {
                "model": "anthropic/claude-sim",
                "max_tokens": 32,
                "metadata": {"user_id": "agent-7"},
                "messages": [{"role": "user", "content": "hello"}],
            },
            world,
            headers={"x-megarouter-tags": "feature=search"},
        )
        assert r.status_code == 200, r.text
        ids["anthropic"] = r.headers["x-megarouter-usage-id"]
        untagged = _post(http, "/v1/chat/completions", CHAT, world)
        ids["none"] = untagged.headers["x-megarouter-usage-id"]
    other = factories.tenant_create()
    other_key = factories.api_key_create(other)
    with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
        theirs = _post(
            http,
            "/v1/chat/completions",
            CHAT,
            world,
            {"x-megarouter-tags": "feature=search"},
            key=other_key,
        )
        assert theirs.status_code == 200
    usage_events_post()
    return world, ids, other


def _tags(request_id):
    return UsageRecord.objects.get(request_id=request_id).tags


def test_tags_from_the_header_and_metadata_are_on_the_usage_record(tagged):
    _, ids, _ = tagged
    # OpenAI's free-text user (u-42) is not kept
    assert _tags(ids["openai"]) == {"feature": "search", "env": "prod", "team": "ml"}
    assert _tags(ids["anthropic"]) == {"feature": "search", "user": "agent-7"}
    assert _tags(ids["none"]) == {}


@pytest.mark.parametrize(
    "header",
    [
        "feature",
        "=x",
        "bad key=1",
        "a__b=1",
        "k=" + "v" * 129,
        ",".join(f"k{i}=v" for i in range(17)),
    ],
)
def test_a_bad_tags_header_is_a_400_in_each_format(gateway_server, sim_world, header):
    with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
        openai = _post(http, "/v1/chat/completions", CHAT, sim_world, {"x-megarouter-tags": header})
        anthropic = _post(
            http,
            "/v1/messages",
            {
                "model": "anthropic/claude-sim",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
            },
            sim_world,
            {"x-megarouter-tags": header},
        )
    assert openai.status_code == 400
    error = openai.json()["error"]
    assert (error["param"], error["code"]) == ("x-megarouter-tags", "invalid_tags")
    assert anthropic.status_code == 400
    assert anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "invalid_request_error"


def test_analytics_filter_and_group_by_tag(tagged):
    world, _, _ = tagged
    api = APIClient()
    api.force_login(world.tenant.membership.user)
    base = f"/api/orgs/{world.tenant.organization.slug}/analytics"
    search = api.get(f"{base}/summary/", {"days": 1, "tag": "feature=search"}).json()
    assert search["totals"]["requests"] == 2  # not the other organization's
    both = api.get(f"{base}/summary/", {"days": 1, "tag": "feature=search,env=prod"}).json()
    assert both["totals"]["requests"] == 1
    grouped = api.get(f"{base}/breakdown/", {"days": 1, "group_by": "tag:feature"}).json()
    assert grouped["source"] == "usagerecord"
    counts = {row["tag:feature"]: row["requests"] for row in grouped["rows"]}
    records = UsageRecord.objects.filter(organization=world.tenant.organization)
    assert counts["search"] == 2 and counts["chat"] == 1
    assert counts[None] == records.count() - 3  # the records without the tag
    bad = api.get(f"{base}/summary/", {"tag": "feature"})
    assert bad.status_code == 400 and "tag" in bad.json()
    bad = api.get(f"{base}/breakdown/", {"group_by": "tag:a b"})
    assert bad.status_code == 400 and "group_by" in bad.json()


def test_the_csv_carries_the_tags(tagged):
    from billing.reports.csv_export import COLUMNS, usage_csv_rows

    _, ids, _ = tagged
    rows = list(usage_csv_rows(UsageRecord.objects.filter(request_id=ids["openai"])))
    assert dict(zip(COLUMNS, rows[0], strict=True))["tags"] == "env=prod;feature=search;team=ml"


def test_a_report_keeps_to_a_tag(tagged, settings, tmp_path):
    from billing.models import Report
    from billing.reports.services import report_build

    settings.REPORTS_DIR = tmp_path
    world, _, _ = tagged
    api = APIClient()
    api.force_login(world.tenant.membership.user)
    created = api.post(
        f"/api/orgs/{world.tenant.organization.slug}/reports/",
        {"kind": "csv", "days": 1, "filters": {"tag": "feature=search"}},
        format="json",
    )
    assert created.status_code == 202, created.content
    report = report_build(report_id=created.json()["id"])
    assert report is not None and report.status == "done", report and report.error
    assert Report.objects.get(pk=report.pk).filters == {"tag": ["feature=search"]}
    assert report.rows == 2  # the two search requests of this organization


def _committed(call):
    """``call()`` on a thread of its own (its own connection, autocommit): what it writes is
    committed, so the server thread sees it (the test's own transaction would hide it)."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def run():
        try:
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def test_a_tag_budget_set_through_the_api_stops_the_tagged_requests(gateway_server, sim_world):
    """A tag budget created through the management API (over HTTP, the same server) applies to
    the next request: requests tagged feature=capped are refused at its limit (the tag layer
    named), the same key's other requests are served; bad tags are field errors."""
    from orgs.services import access_token_create

    world = sim_world
    token = _committed(
        lambda: access_token_create(user=world.tenant.membership.user, name="tag budgets")
    ).raw_token
    url = f"/api/orgs/{world.tenant.organization.slug}/budgets/"
    body = {"scope": "tag", "tag": "feature=capped", "period": "monthly", "limit_usd": "0.000001"}
    management = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
        created = http.post(url, json=body, headers=management)
        assert created.status_code == 201, created.text
        assert (created.json()["scope"], created.json()["tag"]) == ("tag", "feature=capped")
        try:
            for bad in ("feature", "a b=c", "k=v|w", "k=" + "v" * 129):
                refused = http.post(url, json={**body, "tag": bad}, headers=management)
                assert refused.status_code == 400 and "tag" in refused.json(), bad
            wrong = http.post(url, json={**body, "scope": "organization"}, headers=management)
            assert wrong.status_code == 400 and "tag" in wrong.json()
            tag = {"x-megarouter-tags": "feature=capped"}
            capped = _post(http, "/v1/chat/completions", CHAT, world, tag)
            free = _post(http, "/v1/chat/completions", CHAT, world, {"x-megarouter-tags": "a=b"})
            assert capped.status_code == 429, capped.text
            assert capped.json()["error"]["code"] == "budget_exceeded"
            assert capped.headers["x-megarouter-budget-layer"] == "tag"
            assert free.status_code == 200
        finally:
            http.delete(f"{url}{created.json()['id']}/", headers=management)
