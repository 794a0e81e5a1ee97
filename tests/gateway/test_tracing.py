"""OpenTelemetry traces through the real gateway (uvicorn, the simulator): one server span per
request, joined to the caller's traceparent, one client span per provider attempt with its
outcome (a 500 and a 429 failed over, then the answer), streams traced when they end,
refusals traced with their status and code; no prompt or completion text in any span."""

from __future__ import annotations

import httpx
import orjson
import pytest

from megarouter import tracing

CANARY = "canary-trace-5d1e"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.configure(exporter, batch=False)
    yield exporter
    tracing.shutdown()


def _post(http, world, body, headers=None):
    return http.post(
        "/v1/chat/completions",
        content=orjson.dumps(body),
        headers={**world.auth(), "content-type": "application/json", **(headers or {})},
    )


def _chat(model, **extra):
    return {"model": model, "messages": [{"role": "user", "content": CANARY}], **extra}


def test_a_failed_over_request_is_one_server_span_with_an_attempt_span_each(
    gateway_server, sim_world, spans
):
    with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
        response = _post(http, sim_world, _chat("openai/gpt-flaky"), {"traceparent": PARENT})
    assert response.status_code == 200
    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.kind.name == "SERVER"]
    attempts = [s for s in finished if s.kind.name == "CLIENT"]
    assert format(server.context.trace_id, "032x") == TRACE_ID  # the caller's trace
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert server.name == "POST /v1/chat/completions"
    a = server.attributes
    assert a["http.response.status_code"] == 200
    assert a["gen_ai.request.model"] == "openai/gpt-flaky"
    assert a["gen_ai.response.model"] == "openai/gpt-flaky"
    assert a["megarouter.deployment"] == "sim-flaky-c"
    assert a["megarouter.attempts"] == 3
    assert a["gen_ai.usage.input_tokens"] > 0
    assert a["megarouter.cost_usd"] == response.headers["x-megarouter-cost-usd"]
    assert [(s.name, s.attributes["megarouter.outcome"]) for s in attempts] == [
        ("attempt sim-flaky-a", "server_error"),
        ("attempt sim-flaky-b", "rate_limited"),
        ("attempt sim-flaky-c", "ok"),
    ]
    assert all(s.parent.span_id == server.context.span_id for s in attempts)
    assert [s.status.status_code.name for s in attempts] == ["ERROR", "ERROR", "UNSET"]
    assert all(server.start_time <= s.start_time <= s.end_time <= server.end_time for s in attempts)
    assert attempts[0].end_time <= attempts[1].start_time  # one after the other
    for span in finished:
        assert CANARY not in repr(dict(span.attributes)) + span.name


def test_streams_are_traced_when_they_end_and_refusals_with_their_code(
    gateway_server, sim_world, spans
):
    with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
        streamed = _post(http, sim_world, _chat("openai/gpt-sim", stream=True))
        unknown = _post(http, sim_world, _chat("openai/no-such-model"))
        anonymous = http.post("/v1/chat/completions", content=b"{}")
    assert (streamed.status_code, unknown.status_code, anonymous.status_code) == (200, 404, 401)
    servers = {
        s.attributes["megarouter.request_id"]: s
        for s in spans.get_finished_spans()
        if s.kind.name == "SERVER"
    }
    stream = servers[streamed.headers["x-request-id"]].attributes
    assert stream["megarouter.stream"] is True and stream["gen_ai.usage.output_tokens"] > 0
    assert "megarouter.ttft_ms" in stream
    missing = servers[unknown.headers["x-request-id"]].attributes
    assert (missing["http.response.status_code"], missing["error.type"]) == (404, "model_not_found")
    refused = servers[anonymous.headers["x-request-id"]]
    assert refused.attributes["http.response.status_code"] == 401
    assert "megarouter.organization_id" not in refused.attributes


def test_tracing_is_off_unless_configured(settings, monkeypatch):
    tracing.shutdown()
    settings.MEGAROUTER_TRACING = ""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.tracer() is None
    tracing.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    assert tracing.tracer() is not None
    tracing.shutdown()
