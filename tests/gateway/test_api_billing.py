"""Billing in the hot path, through the real uvicorn server and the provider simulator, on the
process's admission backend (the database in the embedded mode, Redis with REDIS_URL):
refusals per budget layer, balance and rate limit with nothing charged; a mixed burst whose
client-seen costs equal the usage records and the ledger to the last digit; a concurrent
budget that admits exactly what fits; a stream the client abandons is charged what was
generated."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from django.db import OperationalError
from prometheus_client import REGISTRY

from billing import services as billing
from billing.models import LedgerEntry, Reservation, UsageEvent, UsageRecord
from billing.tasks import usage_events_process
from orgs.audit import Actor
from tests.gateway import factories as f
from tests.gateway.schema_check import validate

D = Decimal
SYSTEM = Actor.system()
EXACT_OUT = D("0.000001")  # gpt-exact: $0 input, $1 per million output tokens


class World:
    def __init__(self, sim_url: str) -> None:
        openai_url = f"{sim_url}/openai/v1"
        openai = f.provider_create("openai", "openai", openai_url)
        anthropic = f.provider_create("anthropic", "anthropic", f"{sim_url}/anthropic")
        credential = f.credential_create()
        self.models = {
            "gpt": f.model_create(openai, "gpt-sim"),
            "flaky": f.model_create(openai, "gpt-flaky"),
            "broken": f.model_create(openai, "gpt-broken"),
            "cutter": f.model_create(openai, "gpt-cutter"),
            "slow": f.model_create(openai, "gpt-slow"),
            "claude": f.model_create(anthropic, "claude-sim", quality_tier=4),
            "embed": f.model_create(openai, "embed-sim", mode="embedding", price_out=D(0)),
            # Input free and output capped by max_tokens: the actual cost equals the
            # reservation, so what a budget admits does not depend on timing.
            "exact": f.model_create(openai, "gpt-exact", price_in=D(0), price_out=EXACT_OUT),
            "stall": f.model_create(openai, "gpt-stall"),
            "hang": f.model_create(openai, "gpt-hang"),
        }
        m = self.models
        for model, name, upstream, priority, base in (
            (m["gpt"], "sim-gpt", "gpt-sim", 0, openai_url),
            (m["flaky"], "sim-flaky-a", "gpt-sim~fault=500", 0, openai_url),
            (m["flaky"], "sim-flaky-b", "gpt-sim", 1, openai_url),
            (m["broken"], "sim-broken-a", "gpt-sim~fault=503", 0, openai_url),
            (m["broken"], "sim-broken-b", "gpt-sim~fault=500", 1, openai_url),
            (m["cutter"], "sim-cutter", "gpt-sim~fault=cut~after=3", 0, openai_url),
            (m["slow"], "sim-slow", "gpt-sim~token_ms=30~tokens=300", 0, openai_url),
            (m["claude"], "sim-claude", "claude-sim", 0, f"{sim_url}/anthropic"),
            (m["embed"], "sim-embed", "embed-sim", 0, openai_url),
            (m["exact"], "sim-exact", "gpt-sim~tokens=50", 0, openai_url),
            (m["stall"], "sim-stall", "gpt-sim~fault=stall~after=3~stall_ms=5000", 0, openai_url),
            (m["hang"], "sim-hang", "gpt-sim~fault=hang", 0, openai_url),
        ):
            f.deployment_create(
                model,
                name=name,
                base_url=base,
                upstream_name=upstream,
                priority=priority,
                credential=credential,
            )
        from tests.gateway.conftest import reset_caches

        reset_caches()


# Each test commits its rows (the server thread must see them, and on SQLite a test-wide
# transaction would lock the tables the server writes) and the database is emptied after it.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(gateway_server: Any, simulator_url: str) -> World:
    return World(simulator_url)


class Tenant:
    """A funded organization (dept > team > project) with one key, and its ids."""

    def __init__(self, *, balance: str | None = "50", **key_fields: Any) -> None:
        from orgs.models import ApiKey
        from orgs.secrets import GATEWAY_KEY, prefix_of

        self.t = f.tenant_create(balance=balance)
        self.org = self.t.organization
        self.raw_key = f.api_key_create(self.t, **key_fields)
        self.key = ApiKey.objects.get(secrets__prefix=prefix_of(self.raw_key, GATEWAY_KEY))
        project = self.t.project
        team = project.parent
        self.scope_ids = {
            "organization": None,
            "department": team.parent_id,
            "team": team.pk,
            "project": project.pk,
            "member": self.t.membership.pk,
            "key": self.key.pk,
        }

    def budget(self, scope: str, limit: str) -> Any:
        return billing.budget_create(
            actor=SYSTEM,
            organization=self.org,
            scope=scope,
            scope_id=self.scope_ids[scope],
            period="monthly",
            limit_usd=limit,
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.raw_key}"}

    def books(self) -> dict[str, Any]:
        """Everything a request could have changed, for 'nothing changed' checks."""
        from billing.models import BillingAccount, BudgetUsage

        account = BillingAccount.objects.filter(organization=self.org).first()
        uses = list(BudgetUsage.objects.filter(budget__organization=self.org))
        return {
            "balance": account.balance if account else None,
            "held": account.held if account else None,
            "ledger": LedgerEntry.objects.filter(organization=self.org).count(),
            "events": UsageEvent.objects.filter(organization_id=self.org.pk).count(),
            "records": UsageRecord.objects.filter(organization=self.org).count(),
            "reservations": Reservation.objects.filter(organization_id=self.org.pk).count(),
            # (spend, holds) over every budget: a refused reserve may open a period's row at
            # zero (the database backend), it never moves an amount.
            "budget_use": [
                sum((getattr(u, name) for u in uses), D(0)) for name in ("spent", "held")
            ],
        }

    def charged(self) -> Decimal:
        """Usage ledger total (charges are negative)."""
        amounts = LedgerEntry.objects.filter(organization=self.org, kind="usage")
        return -sum((e.amount for e in amounts), D(0))


def chat(model: str = "openai/gpt-sim", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say something about budgets."},
        ],
    }
    body.update(kw)
    return body


def refusals(layer: str) -> float:
    return REGISTRY.get_sample_value("megarouter_budget_refusals_total", {"layer": layer}) or 0.0


def read_beside_server(query: Any) -> Any:
    """Run a test-side read while the server thread may be writing. The embedded test
    database is SQLite's shared-cache memory database, where a reader meets a writer's table
    lock as an immediate "database table is locked" instead of waiting: retry it briefly."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return query()
        except OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def wait_settled(request_id: str) -> None:
    """Wait until the server has written the usage event of a stream the client left."""
    deadline = time.monotonic() + 10
    while not read_beside_server(UsageEvent.objects.filter(request_id=request_id).exists):
        assert time.monotonic() < deadline, "the abandoned stream was never settled"
        time.sleep(0.05)


def wait_for_admission_writes() -> None:
    """The Redis backend writes the reservation row while the provider answers and settles
    within the request: nothing is pending once responses are read. Give its background
    writes of refused requests (there are none: refusals write nothing) a moment anyway."""
    time.sleep(0.05)


# ---------------------------------------------------------------- refusals


LAYERS = ("organization", "department", "team", "project", "member", "key")


def test_a_provider_refusing_the_input_is_a_400_and_charges_nothing(gateway_server, world):
    """``dimensions`` beyond what the model gives: the provider's 400 reaches the client as
    the gateway's own error object, the hold is released and nothing is charged."""
    tenant = Tenant()
    before = tenant.books()
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
        response = http.post(
            "/v1/embeddings",
            json={"model": "openai/embed-sim", "input": "a", "dimensions": 10**9},
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    wait_for_admission_writes()
    assert tenant.books() == before


def test_a_budget_at_each_layer_refuses_with_429_and_charges_nothing(gateway_server, world):
    for layer in LAYERS:
        tenant = Tenant()
        tenant.budget(layer, "0")
        before = tenant.books()
        counted = refusals(layer)
        with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
            response = http.post("/v1/chat/completions", json=chat())
            streamed = http.post("/v1/chat/completions", json=chat(stream=True))
        assert response.status_code == 429, layer
        assert streamed.status_code == 429  # refused before the stream opens
        error = response.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert error["type"] == "rate_limit_error"
        assert error["message"].startswith(f"The {layer} budget (id ")
        assert response.headers["x-megarouter-budget-layer"] == layer
        assert response.headers["x-should-retry"] == "false"
        assert "retry-after" not in response.headers
        assert "x-megarouter-cost-usd" not in response.headers
        assert refusals(layer) == counted + 2
        wait_for_admission_writes()
        assert tenant.books() == before, layer


def test_an_empty_balance_is_402_and_changes_nothing(gateway_server, world):
    tenant = Tenant(balance=None)
    before = tenant.books()
    counted = refusals("balance")
    with httpx.Client(base_url=gateway_server.url, timeout=15) as http:
        response = http.post("/v1/chat/completions", json=chat(), headers=tenant.headers)
        messages = http.post(
            "/v1/messages",
            json={
                "model": "anthropic/claude-sim",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}],
            },
            headers=tenant.headers,
        )
    assert response.status_code == 402
    assert response.json()["error"] == {
        "message": "The organization's prepaid balance does not cover this request. Top up "
        "the balance to continue.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_balance",
    }
    assert messages.status_code == 402
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["type"] == "billing_error"
    assert refusals("balance") == counted + 2
    assert tenant.books() == before


def test_a_balance_smaller_than_the_worst_case_is_refused(gateway_server, world):
    """Admission holds the worst case (prompt estimate + max_tokens at the dearest candidate's
    price), not the likely cost: $0.0001 covers 100 output tokens of gpt-exact, not 101."""
    tenant = Tenant(balance="0.0001")
    with httpx.Client(base_url=gateway_server.url, timeout=15) as http:
        refused = http.post(
            "/v1/chat/completions",
            json=chat("openai/gpt-exact", max_tokens=101),
            headers=tenant.headers,
        )
        admitted = http.post(
            "/v1/chat/completions",
            json=chat("openai/gpt-exact", max_tokens=100),
            headers=tenant.headers,
        )
    assert refused.status_code == 402
    assert admitted.status_code == 200
    # gpt-sim~tokens=50 answers 50 tokens: charged 50 x $1/M, the rest of the hold released.
    assert admitted.headers["x-megarouter-cost-usd"] == "0.00005"


def test_rate_limit_is_429_with_retry_after_and_charges_only_what_ran(gateway_server, world):
    tenant = Tenant(rpm_limit=2)
    counted = refusals("rate_limit")
    with httpx.Client(base_url=gateway_server.url, timeout=15) as http:
        responses = [
            http.post("/v1/chat/completions", json=chat(), headers=tenant.headers) for _ in range(3)
        ]
    assert [r.status_code for r in responses] == [200, 200, 429]
    limited = responses[2]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert refusals("rate_limit") == counted + 1
    assert UsageEvent.objects.filter(organization_id=tenant.org.pk).count() == 2
    usage_events_process()
    costs = sum(D(r.headers["x-megarouter-cost-usd"]) for r in responses[:2])
    assert tenant.charged() == costs


# ---------------------------------------------------------------- the books balance


async def _send(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request; what the client learns about its cost (header, stream extension, SSE
    comment), and the stream's chunks."""
    if not body.get("stream"):
        response = await http.post(path, json=body)
        header = response.headers.get("x-megarouter-cost-usd")
        return {
            "status": response.status_code,
            "cost": D(header) if header is not None else None,
            "usage_id": response.headers.get("x-megarouter-usage-id"),
        }
    chunks: list[Any] = []
    comments: list[str] = []
    async with http.stream("POST", path, json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith(": x-megarouter-cost-usd "):
                comments.append(line.split(" ", 2)[2])
            elif line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(orjson.loads(line[6:]))
    extension = [c["x_megarouter"]["cost_usd"] for c in chunks if "x_megarouter" in c]
    assert len(comments) <= 1 and len(extension) <= 1
    if extension:
        assert extension == comments  # both ways of telling agree
    return {
        "status": response.status_code,
        "cost": D(comments[0]) if comments else None,
        "usage_id": response.headers.get("x-megarouter-usage-id"),
        "chunks": chunks,
        "error": any("error" in c for c in chunks),
    }


def test_burst_costs_seen_by_clients_equal_usage_records_and_ledger(gateway_server, world):
    tenant = Tenant(balance="20")
    start_balance = D("20")
    say = {"messages": [{"role": "user", "content": "Tell me a short story."}]}
    bodies: list[tuple[str, dict[str, Any]]] = []
    for i in range(3):
        for stream in (False, True):
            usage = {"stream_options": {"include_usage": i != 2}} if stream else {}
            bodies += [
                (
                    "/v1/chat/completions",
                    {"model": "openai/gpt-sim", "stream": stream, **usage, **say},
                ),
                (
                    "/v1/chat/completions",
                    {"model": "openai/gpt-flaky", "stream": stream, **usage, **say},
                ),
                ("/v1/chat/completions", {"model": "openai/gpt-broken", "stream": stream, **say}),
                ("/v1/chat/completions", {"model": "openai/gpt-cutter", "stream": stream, **say}),
                (
                    "/v1/chat/completions",
                    {"model": "anthropic/claude-sim", "stream": stream, "max_tokens": 40, **say},
                ),
            ]
    bodies += [
        ("/v1/embeddings", {"model": "openai/embed-sim", "input": ["a", "bb", "ccc"]}),
        ("/v1/responses", {"model": "openai/gpt-sim", "input": "hello", "stream": True}),
        ("/v1/messages", {"model": "openai/gpt-sim", "max_tokens": 30, "stream": True, **say}),
        ("/v1/completions", {"model": "openai/gpt-sim", "prompt": "once", "stream": True}),
    ]

    async def burst() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(
            base_url=gateway_server.url, headers=tenant.headers, timeout=30
        ) as http:
            return await asyncio.gather(*(_send(http, path, body) for path, body in bodies))

    results = asyncio.run(burst())
    # gpt-broken fails everywhere, streamed or not; the cutter's truncated body fails a
    # non-streamed call and breaks a stream after its first chunks: 502, or 503 once the
    # circuit breaker of a failing deployment opened during the burst (timing decides).
    outcome = [
        (body.get("model"), bool(body.get("stream")), r)
        for (_, body), r in zip(bodies, results, strict=True)
    ]
    failed = [(model, stream, r["status"]) for model, stream, r in outcome if r["status"] != 200]
    assert {(model, stream) for model, stream, _ in failed} >= {
        ("openai/gpt-broken", False),
        ("openai/gpt-broken", True),
        ("openai/gpt-cutter", False),
    }
    assert {model for model, _, _ in failed} == {"openai/gpt-broken", "openai/gpt-cutter"}
    assert {status for _, _, status in failed} <= {502, 503}
    assert len(failed) >= 9
    interrupted = [r for r in results if r.get("error")]
    cut_streams = [r for model, stream, r in outcome if model == "openai/gpt-cutter" and stream]
    assert len(interrupted) == len([r for r in cut_streams if r["status"] == 200])
    charged = [r for r in results if r["cost"] is not None]
    assert all(r["status"] == 200 for r in charged)
    # Every 200 told its cost (header, usage chunk or trailing comment); no failure was charged.
    assert len(charged) == len(results) - len(failed)
    assert all(r["usage_id"] for r in charged)
    client_total = sum((r["cost"] for r in charged), D(0))
    assert client_total > 0

    assert Reservation.objects.filter(organization_id=tenant.org.pk).count() == 0
    assert UsageEvent.objects.filter(organization_id=tenant.org.pk).count() == len(charged)
    usage_events_process()
    records = {r.request_id: r for r in UsageRecord.objects.filter(organization=tenant.org)}
    assert len(records) == len(charged)
    for r in charged:
        assert records[r["usage_id"]].cost == r["cost"]
    assert sum((r.cost for r in records.values()), D(0)) == client_total
    assert tenant.charged() == client_total
    from billing.models import BillingAccount

    account = BillingAccount.objects.get(organization=tenant.org)
    assert account.balance == start_balance - client_total
    assert billing.account_check() == []

    # The usage record is complete (metadata only).
    flaky = [x for x in records.values() if x.requested_model == "openai/gpt-flaky"]
    assert len(flaky) == 6
    for record in flaky:
        assert (record.model, record.provider, record.deployment) == (
            "openai/gpt-flaky",
            "openai",
            "sim-flaky-b",
        )
        trail = record.routing["attempts"]
        assert (record.strategy, record.attempts, record.fallback_used) == (
            "fixed",
            len(trail),
            len(trail) > 1,
        )
        # sim-flaky-a fails (500) until its breaker opens mid-burst; then it is skipped
        # without a call, or ordered behind sim-flaky-b by the engine.
        assert trail[-1] == {"deployment": "sim-flaky-b", "error": None, "status": None}
        for failed in trail[:-1]:
            assert failed in (
                {"deployment": "sim-flaky-a", "error": "server_error", "status": 500},
                {"deployment": "sim-flaky-a", "error": "skipped_breaker_open", "status": None},
            )
        assert sorted(c["deployment"] for c in record.routing["explain"]["candidates"]) == [
            "sim-flaky-a",
            "sim-flaky-b",
        ]
        assert record.price_version_id == world.models["flaky"].prices.get().pk
        assert record.status == "ok"
        assert record.tokens_in > 0 and record.tokens_out > 0
        assert record.latency_ms is not None
        assert record.cost == record.tokens_in * f.PRICE_IN + record.tokens_out * f.PRICE_OUT
        assert record.key_id == tenant.key.pk
        assert record.project_id == tenant.scope_ids["project"]
    # The first ones saw sim-flaky-a fail before any breaker could open.
    assert any(x.routing["attempts"][0]["status"] == 500 for x in flaky)
    streamed = [x for x in flaky if x.ttft_ms is not None]
    assert len(streamed) == 3
    cut = [x for x in records.values() if x.requested_model == "openai/gpt-cutter"]
    assert [x.status for x in cut] == ["incomplete"] * len(interrupted)


def test_the_usage_chunk_carries_the_cost_and_stays_schema_valid(gateway_server, world):
    tenant = Tenant()
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
        lines = []
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json=chat(stream=True, stream_options={"include_usage": True}),
        ) as response:
            lines = list(response.iter_lines())
    data = [orjson.loads(x[6:]) for x in lines if x.startswith("data: {")]
    usage_chunk = data[-1]
    assert usage_chunk["choices"] == []
    validate("CreateChatCompletionStreamResponse", usage_chunk)
    cost = D(usage_chunk["x_megarouter"]["cost_usd"])
    usage = usage_chunk["usage"]
    assert cost == usage["prompt_tokens"] * f.PRICE_IN + usage["completion_tokens"] * f.PRICE_OUT
    comment = [x for x in lines if x.startswith(":")]
    assert comment == [f": x-megarouter-cost-usd {usage_chunk['x_megarouter']['cost_usd']}"]
    # Settled first; then the comment, the usage chunk and [DONE] close the stream.
    events = [x for x in lines if x]
    assert events[-3:] == [
        comment[0],
        "data: " + orjson.dumps(usage_chunk).decode(),
        "data: [DONE]",
    ]


def test_concurrent_requests_admit_exactly_what_the_budget_fits(gateway_server, world):
    """60 requests at once against a key budget that fits 20 (each reserves and costs exactly
    10 output tokens x $1/M): 20 admitted, 40 refused, charged exactly the limit."""
    tenant = Tenant()
    limit = D("0.0002")
    budget = tenant.budget("key", str(limit))
    body = chat("openai/gpt-exact", max_tokens=10)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(
            base_url=gateway_server.url, headers=tenant.headers, timeout=60, limits=limits
        ) as http:
            return await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(60))
            )

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20
    assert statuses.count(429) == 40
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {
        "budget_exceeded"
    }
    costs = [D(r.headers["x-megarouter-cost-usd"]) for r in responses if r.status_code == 200]
    assert costs == [D("0.00001")] * 20
    usage_events_process()
    assert tenant.charged() == limit
    from billing.models import BudgetUsage

    [use] = BudgetUsage.objects.filter(budget=budget)
    assert (use.spent, use.held) == (limit, D(0))


def test_a_stream_the_client_abandons_is_charged_what_was_generated(gateway_server, world):
    tenant = Tenant()
    body = chat("openai/gpt-slow", stream=True)
    with (
        httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        usage_id = response.headers["x-megarouter-usage-id"]
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen == 5:
                break  # leave mid-stream: the connection closes
    wait_settled(usage_id)
    usage_events_process()
    record = UsageRecord.objects.get(request_id=usage_id)
    assert record.status == "incomplete"
    # Charged the estimated prompt and what was relayed before the client left, not the 300
    # tokens the upstream would have produced.
    assert 4 <= record.tokens_out < 300
    assert record.tokens_in > 0
    assert record.cost == record.tokens_in * f.PRICE_IN + record.tokens_out * f.PRICE_OUT
    assert tenant.charged() == record.cost
    assert Reservation.objects.filter(organization_id=tenant.org.pk).count() == 0


def test_the_openai_sdk_raises_on_a_budget_refusal_without_retrying(gateway_server, world):
    """``x-should-retry: false``: the SDK's automatic retries (max_retries=2) do not hammer a
    budget that will not have room a second later; a balance refusal likewise."""
    import openai

    tenant = Tenant()
    tenant.budget("project", "0")
    client = openai.OpenAI(base_url=f"{gateway_server.url}/v1", api_key=tenant.raw_key)
    counted = refusals("project")
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(**chat())
    assert raised.value.code == "budget_exceeded"
    assert refusals("project") == counted + 1  # one request reached the gateway
    broke = Tenant(balance=None)
    client = openai.OpenAI(base_url=f"{gateway_server.url}/v1", api_key=broke.raw_key)
    counted = refusals("balance")
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**chat())
    assert raised.value.status_code == 402
    assert refusals("balance") == counted + 1


def test_failover_deadlines_end_hung_and_stalled_calls_and_bill_only_what_was_sent(
    gateway_server, world, settings
):
    """The failover loop's TTFT and stall deadlines (ROUTING_*_TIMEOUT_S) reach the adapters:
    a deployment that never answers is a 504 with nothing charged; a stream that stalls after
    its first tokens ends with an error event and is charged what was relayed."""
    settings.ROUTING_TTFT_TIMEOUT_S = 0.4
    settings.ROUTING_STALL_TIMEOUT_S = 0.4
    settings.ROUTING_ATTEMPT_TIMEOUT_S = 0.6
    tenant = Tenant()
    before = tenant.books()
    started = time.monotonic()
    with httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http:
        hung = http.post("/v1/chat/completions", json=chat("openai/gpt-hang"))
        hung_stream = http.post("/v1/chat/completions", json=chat("openai/gpt-hang", stream=True))
        assert tenant.books() == before  # refused nothing, charged nothing, held nothing
        with http.stream(
            "POST", "/v1/chat/completions", json=chat("openai/gpt-stall", stream=True)
        ) as response:
            assert response.status_code == 200
            usage_id = response.headers["x-megarouter-usage-id"]
            lines = [line for line in response.iter_lines() if line]
    assert time.monotonic() - started < 4  # not the simulator's 5 s stall
    for result in (hung, hung_stream):
        assert result.status_code == 504
        assert result.json()["error"]["message"] == (
            "Every candidate deployment failed. Tried: sim-hang (timeout)."
        )
    error = orjson.loads(lines[-1][6:])["error"]
    assert error["code"] == "stream_interrupted"
    cost = D(lines[-2].split(" ", 2)[2])  # the trailing comment, before the error event
    usage_events_process()
    record = UsageRecord.objects.get(request_id=usage_id)
    relayed = "".join(
        choice["delta"].get("content") or ""
        for line in lines
        if line.startswith("data: {") and "choices" in line
        for choice in orjson.loads(line[6:])["choices"]
    )
    assert len(relayed.split()) == 3  # the simulator stalled after 3 tokens
    out = (len(relayed) + 3) // 4  # no usage report: characters / 4, rounded up
    assert (record.status, record.tokens_out) == ("incomplete", out)
    assert record.cost == cost == record.tokens_in * f.PRICE_IN + out * f.PRICE_OUT
    assert tenant.charged() == cost


def test_a_streams_checkpoint_stays_ahead_of_what_it_relayed(gateway_server, world):
    """Before a chunk goes out, the hold's checkpoint covers it: a process killed at any
    moment is charged at least what its clients received (reconciliation charges the
    checkpoint; tests/billing/test_crash.py)."""
    from billing.admission import get_backend

    tenant = Tenant()
    body = chat("openai/gpt-slow", stream=True)

    def checkpoint(request_id: str) -> int:
        backend = get_backend()
        if backend.name == "redis":
            held = backend.sync.hget(backend.keys(tenant.org.pk).res(request_id), "out")
            return int(held or 0)
        row = read_beside_server(Reservation.objects.filter(request_id=request_id).first)
        return int((row.progress or {}).get("out", 0)) if row else 0

    seen_at: list[tuple[int, int]] = []
    with (
        httpx.Client(base_url=gateway_server.url, headers=tenant.headers, timeout=15) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        usage_id = response.headers["x-megarouter-usage-id"]
        received = 0
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                received += 1
                if received % 20 == 0:
                    seen_at.append((received, checkpoint(usage_id)))
            if received == 120:
                break
    assert len(seen_at) == 6
    assert all(covered >= received for received, covered in seen_at), seen_at
    wait_settled(usage_id)
