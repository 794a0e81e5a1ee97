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


class _Receiver:
    """A real OTLP/HTTP trace receiver on 127.0.0.1: POST /v1/traces with the protobuf
    ExportTraceServiceRequest, kept decoded."""

    def __init__(self):
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        received = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                received.append((self.path, self.headers["content-type"], message))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self):
        out = []
        for _path, _type, message in self.requests:
            for resource in message.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    out += [(service, span) for span in scope.spans]
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_spans_reach_a_real_otlp_receiver_configured_by_the_standard_variables(
    gateway_server, sim_world, settings, monkeypatch
):
    receiver = _Receiver()
    try:
        tracing.shutdown()
        settings.MEGAROUTER_TRACING = ""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
        with httpx.Client(base_url=gateway_server.url, timeout=30) as http:
            response = _post(http, sim_world, _chat("openai/gpt-sim"), {"traceparent": PARENT})
        assert response.status_code == 200
        tracing._state["provider"].force_flush()
        spans = receiver.spans()
        assert {path for path, _, _ in receiver.requests} == {"/v1/traces"}
        assert {ctype for _, ctype, _ in receiver.requests} == {"application/x-protobuf"}
        names = [span.name for _, span in spans]
        assert sorted(names) == sorted(
            [
                "POST /v1/chat/completions",
                "authenticate",
                "route",
                "admission.reserve",
                "attempt sim-gpt",
                "admission.settle",
            ]
        )
        assert all(service["service.name"] == "gateway-under-test" for service, _ in spans)
        assert {span.trace_id.hex() for _, span in spans} == {TRACE_ID}
        server = next(span for _, span in spans if span.name.startswith("POST"))
        children = [span for _, span in spans if span is not server]
        assert all(span.parent_span_id == server.span_id for span in children)
        attributes = {a.key: a.value for a in server.attributes}
        assert attributes["gen_ai.response.model"].string_value == "openai/gpt-sim"
        assert attributes["gen_ai.usage.output_tokens"].int_value > 0
        assert (
            attributes["megarouter.cost_usd"].string_value
            == response.headers["x-megarouter-cost-usd"]
        )
        starts = {span.name: span.start_time_unix_nano for span in children}
        assert starts["authenticate"] <= starts["route"] <= starts["admission.reserve"]
        assert (
            starts["admission.reserve"] <= starts["attempt sim-gpt"] <= starts["admission.settle"]
        )
        assert CANARY not in repr([s.SerializeToString() for _, s in spans])
    finally:
        tracing.shutdown()
        receiver.close()
