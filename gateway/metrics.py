"""Prometheus metrics for the gateway (prometheus-client).

Multiprocess: when ``PROMETHEUS_MULTIPROC_DIR`` is set *before the process starts* (every
uvicorn / granian worker inherits it), prometheus-client writes samples to files in that folder
and ``/metrics`` aggregates every worker's files. Empty the folder when the server (re)starts.
Without it, each process serves its own registry (fine for one worker).

Labels carry ids and names only (organization id, model id, provider slug), never content.
"""

from __future__ import annotations

import hmac
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip
_OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.5,
)  # fmt: skip

REQUESTS = Counter(
    "megarouter_requests",
    "Gateway requests by route, HTTP status, answering model, provider and strategy.",
    ["route", "status", "model", "provider", "strategy"],
)
LATENCY = Histogram(
    "megarouter_request_duration_seconds",
    "Time from request received to the last byte sent.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "megarouter_time_to_first_token_seconds",
    "Streaming: time from request received to the first upstream chunk.",
    ["route", "model"],
    buckets=_LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "megarouter_gateway_overhead_seconds",
    "Time the gateway itself added: total minus time spent waiting on providers.",
    ["route"],
    buckets=_OVERHEAD_BUCKETS,
)
TOKENS = Counter(
    "megarouter_tokens",
    "Tokens by organization, model and direction (prompt / completion).",
    ["organization", "model", "direction"],
)
COST = Counter(
    "megarouter_cost_usd",
    "List-price cost in US dollars by organization and model.",
    ["organization", "model"],
)
FAILOVERS = Counter(
    "megarouter_failovers",
    "Deployments skipped after a failure before one answered.",
    ["model", "provider"],
)
UPSTREAM_ERRORS = Counter(
    "megarouter_upstream_errors",
    "Provider call failures by provider and error kind.",
    ["provider", "kind"],
)
BUDGET_REFUSALS = Counter(
    "megarouter_budget_refusals",
    "Requests refused by admission, by the budget layer that refused "
    "(organization, department, team, project, member, key, rate_limit).",
    ["layer"],
)
STREAM_ERRORS = Counter(
    "megarouter_stream_errors",
    "Streams that ended with an error event after the first byte, or by client disconnect.",
    ["route", "reason"],
)


def registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    return REGISTRY


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``. With ``MEGAROUTER_METRICS_TOKEN`` set, needs ``Authorization: Bearer``
    with that token (401 otherwise)."""
    token = settings.MEGAROUTER_METRICS_TOKEN
    if token:
        supplied = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            return HttpResponse(
                "metrics scrape token required\n", status=401, content_type="text/plain"
            )
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
