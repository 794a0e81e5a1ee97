"""Savings against the effective policy's reference model, end to end: requests through the
real server under a project policy (reference A), a key policy (B, nearer), a per-request
``megarouter.reference_model`` (C, nearest) and no policy at all (the default D); each usage
record carries its reference model, and the analytics API (rollups and raw records), the CSV
export and the PDF report price each request on its own reference model, equal to
hand-computed decimals. A policy naming a model the catalog does not know falls back to the
default and says so in the decision's explanation."""

from __future__ import annotations

import csv
import datetime as dt
import subprocess
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from rest_framework.test import APIClient

from billing.analytics.rollups import rollup_advance
from billing.models import Report, UsageRecord
from billing.reports import services as reports
from billing.reports.tasks import report_build_task
from billing.tasks import usage_events_process
from orgs import services as org_services
from orgs.audit import Actor
from orgs.models import ApiKey
from orgs.secrets import GATEWAY_KEY, prefix_of
from orgs.selectors import root_node
from routing.policies import policy_table_reset, routing_policy_set
from tests.gateway import factories as f
from tests.gateway.test_api_billing import World, chat

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal
SYSTEM = Actor.system()
# (input, output) per token of each reference model; none has a cached price.
PRICES = {
    "openai/ref-a": (D("0.000001"), D("0.000002")),
    "openai/ref-b": (D("0.000003"), D("0.000006")),
    "openai/ref-c": (D("0.000005"), D("0.00001")),
    "openai/ref-default": (D("0.0000025"), D("0.00001")),
}
A, B, C, DEFAULT = sorted(PRICES)


@pytest.fixture(autouse=True)
def _settings(settings, tmp_path):
    settings.REPORTS_DIR = tmp_path / "reports"
    settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL = DEFAULT


@pytest.fixture
def world(gateway_server: Any, simulator_url: str) -> World:
    world = World(simulator_url)
    openai = world.models["gpt"].provider
    for model_id, (p_in, p_out) in PRICES.items():
        f.model_create(openai, model_id.split("/")[1], price_in=p_in, price_out=p_out)
    from tests.gateway.conftest import reset_caches

    reset_caches()
    return world


def _key(tenant: f.Tenant, project: Any, **fields: Any) -> tuple[str, ApiKey]:
    created = org_services.api_key_create(
        actor=SYSTEM,
        project=project,
        membership=tenant.membership,
        name=f"key {project.slug} {len(fields)}",
        **fields,
    )
    raw = created.raw_key
    return raw, ApiKey.objects.get(secrets__prefix=prefix_of(raw, GATEWAY_KEY))


def _send(http: httpx.Client, raw_key: str, **body: Any) -> httpx.Response:
    response = http.post(
        "/v1/chat/completions",
        json=chat("openai/gpt-exact", max_tokens=50, **body),
        headers={"authorization": f"Bearer {raw_key}", "x-megarouter-debug": "1"},
    )
    assert response.status_code == 200, response.text
    return response


def _reference(record: UsageRecord, model_id: str) -> Decimal:
    p_in, p_out = PRICES[model_id]
    return record.tokens_in * p_in + record.tokens_out * p_out


def pdf_text(path: Any) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def test_each_request_is_measured_against_its_policys_reference_model(gateway_server, world):
    tenant = f.tenant_create()
    project = tenant.project
    bare = org_services.node_create(
        actor=SYSTEM, parent=project.parent, name="No policy", slug="no-policy"
    )
    routing_policy_set(actor=SYSTEM, node=project, data={"reference_model": A})
    project_key, _ = _key(tenant, project)
    key_key, _ = _key(tenant, project, routing_policy={"reference_model": B})
    bare_key, _ = _key(tenant, bare)
    unknown_key, _ = _key(tenant, bare, routing_policy={"reference_model": "nobody/nothing"})
    policy_table_reset()

    sent: dict[str, tuple[str, dict[str, Any]]] = {}
    with httpx.Client(base_url=gateway_server.url, timeout=15) as http:
        for expected, raw, extra in (
            (A, project_key, {}),
            (A, project_key, {}),
            (B, key_key, {}),
            (C, key_key, {"megarouter": {"reference_model": C}}),
            (C, bare_key, {"megarouter": {"reference_model": "ref-c"}}),  # a bare name
            (DEFAULT, bare_key, {}),
            (DEFAULT, unknown_key, {}),
        ):
            response = _send(http, raw, **extra)
            explain = orjson.loads(response.headers["x-megarouter-route"])
            sent[response.headers["x-megarouter-usage-id"]] = (expected, explain)

    usage_events_process()
    records = {
        r.request_id: r for r in UsageRecord.objects.filter(organization=tenant.organization)
    }
    assert set(records) == set(sent)
    expected_ref = {m: D(0) for m in PRICES}
    expected_cost = {m: D(0) for m in PRICES}
    for request_id, (model_id, explain) in sent.items():
        record = records[request_id]
        assert record.reference_model == model_id, (request_id, explain)
        assert explain["reference_model"] == model_id
        assert record.cost == record.tokens_out * D("0.000001")  # gpt-exact: output only
        expected_ref[model_id] += _reference(record, model_id)
        expected_cost[model_id] += record.cost
    notes = [e.get("reference_model_note") for _, e in sent.values()]
    assert [n for n in notes if n] == [
        "unknown model 'nobody/nothing'; savings are measured against the default "
        "'openai/ref-default'"
    ]
    total_ref, total_cost = sum(expected_ref.values()), sum(expected_cost.values())
    assert total_ref > total_cost > 0

    # ---- the analytics API: rollups (whole UTC days) and raw records (any range)
    assert rollup_advance(lag_seconds=0) == len(sent)
    when = min(r.created_at for r in records.values())
    day = when.astimezone(dt.UTC).date()
    client = APIClient()
    client.force_login(tenant.membership.user)
    base = f"/api/orgs/{tenant.organization.slug}/analytics"
    start = when.replace(microsecond=0) - dt.timedelta(seconds=1)
    end = max(r.created_at for r in records.values()) + dt.timedelta(seconds=1)
    raw_period = (
        f"from={start.isoformat().replace('+00:00', 'Z')}"
        f"&to={end.isoformat().replace('+00:00', 'Z')}"
    )
    for period, source in (
        (f"from={day}&to={day + dt.timedelta(days=1)}", "usagerollupdayteam"),
        (raw_period, "usagerecord"),
    ):
        body = client.get(f"{base}/summary/?{period}").json()
        assert body["source"] == source
        assert body["reference_models"] == [A, B, C, DEFAULT]
        assert body["reference_model"] == DEFAULT
        assert body["totals"]["requests"] == len(sent)
        assert D(body["totals"]["cost"]) == total_cost
        assert D(body["totals"]["reference_cost"]) == total_ref
        assert D(body["totals"]["savings"]) == total_ref - total_cost
        rows = client.get(f"{base}/breakdown/?{period}&group_by=reference_model").json()["rows"]
        assert {r["reference_model"]: D(r["savings"]) for r in rows} == {
            m: expected_ref[m] - expected_cost[m] for m in PRICES
        }, source

    # ---- CSV export: one row per request, its reference model and reference cost
    root = root_node(tenant.organization)
    period = {
        "period_start": dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC),
        "period_end": dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC),
    }
    csv_report = Report.objects.create(
        organization=tenant.organization, node=root, kind="csv", **period
    )
    assert report_build_task(csv_report.pk) == "done"
    with reports.report_path(Report.objects.get(pk=csv_report.pk)).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(sent)
    for row in rows:
        model_id = sent[row["request_id"]][0]
        record = records[row["request_id"]]
        assert row["reference_model"] == model_id
        assert row["reference_cost_usd"] == f"{_reference(record, model_id):.12f}"
        assert D(row["savings_usd"]) == _reference(record, model_id) - record.cost
    assert sum(D(r["reference_cost_usd"]) for r in rows) == total_ref

    # ---- PDF report: the savings section, in total and per reference model
    pdf_report = Report.objects.create(
        organization=tenant.organization, node=root, kind="pdf", **period
    )
    assert report_build_task(pdf_report.pk) == "done"
    text = pdf_text(reports.report_path(Report.objects.get(pk=pdf_report.pk)))
    lines = {
        " ".join(line.split()[:-1]): line.split()[-1] for line in text.splitlines() if line.strip()
    }
    assert lines["Actual spend"] == f"{total_cost:.12f}"
    assert lines["Reference cost"] == f"{total_ref:.12f}"
    assert lines["Savings"] == f"{total_ref - total_cost:.12f}"
    assert "on each request's reference model" in " ".join(text.split())
    per_model = {
        line.split()[0]: line.split()[1:]
        for line in text.splitlines()
        if line.strip().startswith("openai/ref-")
    }
    for model_id in PRICES:
        n = sum(1 for m, _ in sent.values() if m == model_id)
        assert per_model[model_id] == [
            str(n),
            f"{expected_cost[model_id]:.12f}",
            f"{expected_ref[model_id]:.12f}",
            f"{expected_ref[model_id] - expected_cost[model_id]:.12f}",
        ], model_id
