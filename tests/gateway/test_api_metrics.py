"""/metrics: Prometheus text, protected by MEGAROUTER_METRICS_TOKEN when set; multiprocess
aggregation when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.test import override_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client(gateway_server, sim_world):
    with httpx.Client(base_url=gateway_server.url, timeout=15) as http:
        yield http


def test_metrics_after_a_request(client, sim_world):
    response = client.post(
        "/v1/chat/completions",
        json={"model": "openai/gpt-sim", "messages": [{"role": "user", "content": "hi"}]},
        headers=sim_world.auth(),
    )
    assert response.status_code == 200
    usage = response.json()["usage"]
    org = sim_world.tenant.organization.pk
    text = client.get("/metrics").text
    assert (
        'megarouter_requests_total{model="openai/gpt-sim",provider="openai",route="chat",status="200",strategy="fixed"}'
        in text
    )
    prompt_line = (
        f'megarouter_tokens_total{{direction="prompt",model="openai/gpt-sim",organization="{org}"}}'
    )
    line = next(line for line in text.splitlines() if line.startswith(prompt_line))
    assert float(line.split()[-1]) >= usage["prompt_tokens"]
    for name in (
        "megarouter_request_duration_seconds_bucket",
        "megarouter_gateway_overhead_seconds_bucket",
        "megarouter_cost_usd_total",
        "# TYPE megarouter_failovers_total counter",
        "# TYPE megarouter_budget_refusals_total counter",
        "# TYPE megarouter_time_to_first_token_seconds histogram",
    ):
        assert name in text


def test_metrics_token(client):
    with override_settings(MEGAROUTER_METRICS_TOKEN="scrape-secret"):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/metrics", headers={"authorization": "Bearer scrape-secret"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain")


def test_multiprocess_mode_aggregates_processes(tmp_path, monkeypatch):
    from prometheus_client import generate_latest

    from gateway.metrics import registry

    script = "from gateway import metrics\nmetrics.BUDGET_REFUSALS.labels('team').inc(3)\n"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "megarouter.settings",
    }
    for _ in range(2):  # two processes, like two server workers
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    out = generate_latest(registry()).decode()
    assert 'megarouter_budget_refusals_total{layer="team"} 6.0' in out


def test_refused_requests_are_counted(client):
    from gateway import metrics

    before = metrics.REQUESTS.labels("chat", "401", "", "", "none")._value.get()
    response = client.post("/v1/chat/completions", json={"model": "x", "messages": []})
    assert response.status_code == 401
    assert metrics.REQUESTS.labels("chat", "401", "", "", "none")._value.get() == before + 1
