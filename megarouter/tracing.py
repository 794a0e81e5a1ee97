"""OpenTelemetry traces of ``/v1/`` requests: metadata only, never a prompt or a completion.

Off unless configured: ``MEGAROUTER_TRACING=otlp`` (or any ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set, the SDK's own variables) exports over OTLP/HTTP
from a batching thread; ``console`` prints spans (a trial); ``off``. The SDK reads the rest
of its standard environment itself: ``OTEL_SERVICE_NAME`` (default ``megarouter-gateway``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``_ARG``, the exporter's headers and
timeouts.

Spans are written once a request's outcome is known, with the times measured on the way
(``request_spans``): nothing on the request path opens or closes a span, so tracing costs a
served request nothing until it ends, and a disabled tracer costs one global read. Per
request:

- one SERVER span ``POST /v1/chat/completions`` (the route template), child of the caller's
  W3C ``traceparent`` when one came: HTTP status, error code, the requested and chosen model,
  provider, strategy, attempts, tokens, cost, time to first token, organization / project /
  key ids (``gen_ai.*`` names from OpenTelemetry's GenAI conventions where one fits);
- one INTERNAL span per step: ``authenticate``, ``route`` (the routing decision),
  ``admission.reserve`` (the hold), ``admission.settle`` (the charge, or the release);
- one CLIENT span per provider attempt (``attempt <deployment>``): deployment, provider,
  model, outcome, upstream status, Retry-After; an error status when it failed. A stream's
  answering attempt spans to its first content (the rest is the request span's).

Off, the request path pays one dict read per step (``steps`` is None: no clock is read).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"tracer": None, "provider": None, "checked": False}


def _mode() -> str:
    mode = str(getattr(settings, "MEGAROUTER_TRACING", "") or "").lower()
    if mode:
        return mode
    env = os.environ
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return "off"


def configure(exporter: Any = None, *, batch: bool = True) -> Any:
    """Start tracing with ``exporter`` (default: the one ``MEGAROUTER_TRACING`` names); returns
    the tracer provider. Tests pass an in-memory exporter with ``batch=False``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        if _mode() == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "megarouter-gateway"}
    )
    provider = TracerProvider(resource=resource)
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    with _lock:
        old = _state["provider"]
        _state.update(tracer=provider.get_tracer("megarouter.gateway"), provider=provider)
        _state["checked"] = True
    if old is not None:
        old.shutdown()
    return provider


def tracer() -> Any:
    """The tracer, None when tracing is off (set up on first use from the settings)."""
    if _state["checked"]:
        return _state["tracer"]
    with _lock:
        if _state["checked"]:
            return _state["tracer"]
        _state["checked"] = True
        wanted = _mode() not in ("off", "false", "0")
    if wanted:
        try:
            configure()
        except Exception:
            logger.warning("tracing not started", exc_info=True)
    return _state["tracer"]


def enabled() -> bool:
    """Whether spans are written (after the first check, one dict read): the request path
    records its step times only then."""
    return tracer() is not None


def step(steps: list[tuple[str, float, float]] | None, name: str, started: float) -> None:
    """Record a step of the request (``authenticate``, ``route``, ``admission.reserve``,
    ``admission.settle``) from ``started`` to now; ``steps`` None: tracing is off."""
    if steps is not None:
        steps.append((name, started, time.perf_counter()))


def shutdown() -> None:
    """Flush and stop (the gateway's lifespan shutdown; tests)."""
    with _lock:
        provider = _state["provider"]
        _state.update(tracer=None, provider=None, checked=False)
    if provider is not None:
        provider.shutdown()


def _ns(perf: float, now_perf: float, now_ns: int) -> int:
    """A time.perf_counter() reading as Unix nanoseconds."""
    return now_ns - int((now_perf - perf) * 1e9)


def request_spans(req: Any, ctx: Any, status: int) -> None:
    """The spans of one finished request (``req``: gateway.api.http.ApiRequest; ``ctx``: its
    pipeline CallContext, None when it was answered before one existed)."""
    found = tracer()
    if found is None:
        return
    try:
        _write(found, req, ctx, status)
    except Exception:  # a trace is an observation: it never changes the answer
        logger.warning("trace not written", exc_info=True)


def _write(found: Any, req: Any, ctx: Any, status: int) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    now_perf, now_ns = time.perf_counter(), time.time_ns()
    parent = TraceContextTextMapPropagator().extract(carrier=req.headers)
    started = ctx.started if ctx is not None else req.started
    attributes = _request_attributes(req, ctx, status)
    span = found.start_span(
        f"{req.method} {req.route or req.path[:120]}",
        context=parent,
        kind=SpanKind.SERVER,
        start_time=_ns(started, now_perf, now_ns),
        attributes=attributes,
    )
    if status >= 500 or status in (499, 598, 599):
        span.set_status(Status(StatusCode.ERROR))
    inside = trace.set_span_in_context(span)
    steps = [*(req.steps or ()), *((ctx.steps or ()) if ctx is not None else ())]
    for name, begun, ended in steps:
        found.start_span(name, context=inside, start_time=_ns(begun, now_perf, now_ns)).end(
            end_time=_ns(ended, now_perf, now_ns)
        )
    for attempt in ctx.attempts if ctx is not None else ():
        if attempt.error is not None and attempt.error.startswith("skipped"):
            continue  # not called: the request span's attempts count says so
        end = _ns(attempt.ended_at, now_perf, now_ns) if attempt.ended_at else now_ns
        child = found.start_span(
            f"attempt {attempt.deployment}",
            context=inside,
            kind=SpanKind.CLIENT,
            start_time=end - int(attempt.elapsed_ms * 1e6),
            attributes=_attempt_attributes(attempt),
        )
        if attempt.error is not None:
            child.set_status(Status(StatusCode.ERROR, attempt.error))
        child.end(end_time=end)
    span.end(end_time=now_ns)


def _request_attributes(req: Any, ctx: Any, status: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "http.request.method": req.method,
        "http.route": req.route or "",
        "http.response.status_code": status,
        "megarouter.request_id": req.request_id,
    }
    code = req.log_fields.get("error_code")
    if code:
        out["error.type"] = str(code)
    key = req.key
    if key is not None:
        out["megarouter.organization_id"] = key.organization_id
        out["megarouter.project_id"] = key.project_id
        out["megarouter.key_id"] = key.key_id
    if ctx is None:
        return out
    out["gen_ai.operation.name"] = "embeddings" if ctx.route == "embeddings" else "chat"
    out["gen_ai.request.model"] = ctx.requested_model[:255]
    out["megarouter.strategy"] = ctx.strategy()
    out["megarouter.attempts"] = len(ctx.attempts)
    if ctx.stream:
        out["megarouter.stream"] = True
    if ctx.chosen is not None:
        out["gen_ai.response.model"] = ctx.chosen.model_id
        out["gen_ai.provider.name"] = ctx.chosen.provider
        out["megarouter.deployment"] = ctx.chosen.deployment
        out["megarouter.cost_usd"] = format(ctx.cost.normalize(), "f")
    if ctx.usage is not None:
        out["gen_ai.usage.input_tokens"] = ctx.usage.prompt_tokens
        out["gen_ai.usage.output_tokens"] = ctx.usage.completion_tokens
    if ctx.ttft_seconds is not None:
        out["megarouter.ttft_ms"] = round(ctx.ttft_seconds * 1000, 3)
    return out


def _attempt_attributes(attempt: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "megarouter.deployment": attempt.deployment,
        "gen_ai.provider.name": attempt.provider,
        "gen_ai.request.model": attempt.model_id,
        "megarouter.outcome": attempt.error or "ok",
    }
    if attempt.status is not None:
        out["http.response.status_code"] = attempt.status
    if attempt.retry_after is not None:
        out["megarouter.retry_after_s"] = attempt.retry_after
    return out
