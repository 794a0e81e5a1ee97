"""The ``/v1/`` endpoint handlers: parse -> authenticate -> pipeline -> render.

Each handler takes an :class:`ApiRequest` and returns an :class:`ApiResponse`; the transports
(ASGI front door, Django view) only move bytes. Errors are raised as ``GatewayError`` and
rendered by :func:`dispatch` as the OpenAI error object (the Anthropic envelope on
``/v1/messages``). Nothing here logs or keeps request or response content.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, Protocol

import orjson

from billing.failures import failure_key, failure_record
from gateway import metrics, pipeline
from gateway.api.http import SSE, SSE_DONE, SSE_HEADERS, ApiRequest, ApiResponse, sse_data
from gateway.auth import authenticate
from gateway.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    UpstreamFailed,
    anthropic_error_json,
    describe_exception,
    error_json,
    route_error,
)
from gateway.pipeline import CallContext
from gateway.providers.types import ChatChunk, ProviderError, Usage
from gateway.wire import anthropic, completions, embeddings, openai_chat, responses
from gateway.wire.common import ROUTING_ALIASES, Inbound, parse_json_object, request_tags
from megarouter import tracing
from routing.engine import NoRoute, model_for_key, models_for_key

logger = logging.getLogger("megarouter.gateway")

Handler = Callable[[ApiRequest], Awaitable[ApiResponse]]


# ---------------------------------------------------------------- shared steps


def _context(req: ApiRequest, route: str, key: Any, inbound: Inbound) -> CallContext:
    req.call = _call_context(req, route, key, inbound)
    if req.steps is not None:
        req.call.steps = []
    return req.call


def _call_context(req: ApiRequest, route: str, key: Any, inbound: Inbound) -> CallContext:
    return CallContext(
        request_id=req.request_id,
        route=route,
        key=key,
        requested_model=inbound.model,
        override=inbound.override,
        needs=frozenset(inbound.needs),
        needs_param=dict(inbound.needs_param),
        max_tokens=inbound.chat.max_tokens,
        stream=inbound.chat.stream,
        client_request_id="x-request-id" in req.headers,
        debug=_debug(req),
        cache_breakpoints=inbound.cache_breakpoints,
        tags=request_tags(req.headers, _metadata(route, inbound)),
    )


def _metadata(route: str, inbound: Inbound) -> Any:
    """The body's metadata a usage record keeps as tags: OpenAI's ``metadata`` object, or
    Anthropic's ``metadata.user_id`` (parsed into ``chat.user``) as ``user``."""
    if route in ("messages", "count_tokens"):
        return {"user": inbound.chat.user} if inbound.chat.user else None
    return inbound.chat.extra.get("metadata")


def _debug(req: ApiRequest) -> bool:
    return req.headers.get("x-megarouter-debug", "").lower() in ("1", "true", "yes")


def _log_ids(req: ApiRequest, key: Any) -> None:
    req.log_fields.update(
        {
            "organization_id": key.organization_id,
            "project_id": getattr(key, "project_id", None),
            "key_id": getattr(key, "key_id", None),
        }
    )


def _headers(ctx: CallContext, *, with_cost: bool) -> dict[str, str]:
    headers = {
        "x-megarouter-strategy": ctx.strategy(),
        "x-megarouter-attempts": str(len(ctx.attempts)),
    }
    if ctx.chosen is not None:
        headers["x-megarouter-model"] = ctx.chosen.model_id
        headers["x-megarouter-provider"] = ctx.chosen.provider
    if ctx.charge_id:
        headers["x-megarouter-usage-id"] = ctx.charge_id  # the usage record's request id
    if ctx.debug and ctx.route_explain is not None:
        headers["x-megarouter-route"] = orjson.dumps(ctx.route_explain).decode("ascii", "replace")
    if with_cost:
        headers["x-megarouter-cost-usd"] = cost_text(ctx.cost)
    return headers


def _record(req: ApiRequest, ctx: CallContext, status: int) -> None:
    """Per-request metrics and log fields once the outcome is known."""
    req.recorded = True
    model = ctx.chosen.model_id if ctx.chosen else ""
    provider = ctx.chosen.provider if ctx.chosen else ""
    metrics.REQUESTS.labels(ctx.route, str(status), model, provider, ctx.strategy()).inc()
    elapsed = time.perf_counter() - ctx.started
    metrics.LATENCY.labels(ctx.route).observe(elapsed)
    metrics.OVERHEAD.labels(ctx.route).observe(max(0.0, elapsed - ctx.upstream_seconds))
    if ctx.ttft_seconds is not None:
        metrics.TTFT.labels(ctx.route, model).observe(ctx.ttft_seconds)
    org = str(ctx.organization_id)
    if ctx.chosen is not None:
        usage = ctx.usage or Usage(completion_tokens=ctx.generated_tokens())
        metrics.TOKENS.labels(org, model, "prompt").inc(usage.prompt_tokens)
        metrics.TOKENS.labels(org, model, "completion").inc(usage.completion_tokens)
        metrics.COST.labels(org, model).inc(float(ctx.cost))
    req.log_fields.update(
        {
            "model": model or None,
            "provider": provider or None,
            "strategy": ctx.strategy(),
            "attempts": len(ctx.attempts),
            "upstream_ms": round(ctx.upstream_seconds * 1000, 3),
            "prompt_tokens": ctx.usage.prompt_tokens if ctx.usage else None,
            "completion_tokens": ctx.generated_tokens() if ctx.chosen else None,
            "cost_usd": format(ctx.cost.normalize(), "f") if ctx.chosen else None,
        }
    )


def _failed(req: ApiRequest, ctx: CallContext, error: GatewayError) -> None:
    _record(req, ctx, error.status)
    req.failed_model, req.failed_provider = _failed_target(ctx)
    if ctx.plan is not None:
        error.headers.update(_headers(ctx, with_cost=False))


def _failed_target(ctx: CallContext) -> tuple[str, str]:
    """The model and provider a failure is counted against: the last deployment tried, else
    the routed plan's first, else a routing alias asked for; "" before the name resolved
    (a caller's typos must not each make a row)."""
    if ctx.chosen is not None:
        return ctx.chosen.model_id, ctx.chosen.provider
    if ctx.attempts:
        return ctx.attempts[-1].model_id, ctx.attempts[-1].provider
    if ctx.plan is not None and ctx.plan.candidates:
        first = ctx.plan.candidates[0]
        return first.model_id, first.provider
    if ctx.requested_model in ROUTING_ALIASES:
        return ctx.requested_model, ""
    return "", ""


async def _authenticate(req: ApiRequest) -> Any:
    if tracing.enabled():
        req.steps = []
    started = time.perf_counter() if req.steps is not None else 0.0
    try:
        key = await authenticate(req.headers, req.client_ip)
    finally:
        tracing.step(req.steps, "authenticate", started)
    req.key = key
    _log_ids(req, key)
    return key


async def _count_stream_failure(req: ApiRequest, ctx: CallContext, logged: int) -> None:
    """A stream answered 200, then ended by an error or by the client (charged for what it
    relayed): counted as ``STREAM_OUTCOMES`` says."""
    status, code = STREAM_OUTCOMES[logged]
    if ctx.chosen is not None:
        req.failed_model, req.failed_provider = ctx.chosen.model_id, ctx.chosen.provider
    await _count_failure(req, status, code, charged=True)


async def _count_failure(req: ApiRequest, status: int, code: str | None, charged: bool) -> None:
    if req.key is None:  # not authenticated: no organization to count it for
        return
    failure = failure_key(
        req.key,
        model=req.failed_model,
        provider=req.failed_provider,
        status=status,
        code=code,
        charged=charged,
    )
    try:  # shielded: a stream's close runs while its task is being cancelled (client gone)
        await asyncio.shield(failure_record(failure))
    except Exception:  # a count is an observation: it never changes the answer
        logger.warning("failed-request count not recorded", exc_info=True)


# ---------------------------------------------------------------- stream renderers


class Renderer(Protocol):
    def start(self, model_id: str) -> list[bytes]: ...
    def chunk(self, chunk: ChatChunk) -> list[bytes]: ...
    def finish(self, model_id: str, cost: Decimal | None = None) -> list[bytes]: ...
    def error(self, error: GatewayError) -> list[bytes]: ...


def cost_text(cost: Decimal) -> str:
    """The charged amount as sent to clients (header, stream extension, SSE comment)."""
    return format(cost.normalize(), "f")


def cost_comment(cost: Decimal) -> bytes:
    """A trailing SSE comment with the charged amount: every SSE parser skips comments, so any
    stream format can carry it (docs/api.md)."""
    return b": x-megarouter-cost-usd " + cost_text(cost).encode() + b"\n\n"


class ChatRenderer:
    """OpenAI chat (or legacy completion) chunks. The usage chunk is held back until the
    stream has been settled, so it carries the charged cost (``x_megarouter.cost_usd``)."""

    def __init__(self, include_usage: bool, *, legacy: bool = False) -> None:
        self.include_usage = include_usage
        self.legacy = legacy
        self.model_id = ""
        self.usage_chunk: ChatChunk | None = None

    def start(self, model_id: str) -> list[bytes]:
        self.model_id = model_id
        return []

    def _body(self, chunk: ChatChunk) -> dict[str, Any] | None:
        if self.legacy:
            return completions.render_completion_chunk(
                chunk, self.model_id, include_usage=self.include_usage
            )
        return openai_chat.render_chunk(chunk, self.model_id, include_usage=self.include_usage)

    def _one(self, chunk: ChatChunk) -> list[bytes]:
        body = self._body(chunk)
        return [sse_data(body)] if body is not None else []

    def chunk(self, chunk: ChatChunk) -> list[bytes]:
        usage = chunk.usage
        if chunk.choices:
            chunk.usage = None
            out = self._one(chunk)
            chunk.usage = usage
        else:
            out = []
        if usage is not None and self.include_usage:
            self.usage_chunk = ChatChunk(
                id=chunk.id, model=chunk.model, created=chunk.created, choices=[], usage=usage
            )
        return out

    def finish(self, model_id: str, cost: Decimal | None = None) -> list[bytes]:
        out = []
        if self.usage_chunk is not None:
            body = self._body(self.usage_chunk)
            if body is not None:
                if cost is not None:
                    body["x_megarouter"] = {"cost_usd": cost_text(cost)}
                out.append(sse_data(body))
        return [*out, SSE_DONE]

    def error(self, error: GatewayError) -> list[bytes]:
        return [b"data: " + error_json(error) + b"\n\n"]


class ResponsesRenderer:
    def __init__(self, shell: responses.ResponseShell) -> None:
        self.stream = responses.ResponsesStream(shell)

    def start(self, model_id: str) -> list[bytes]:
        self.model_id = model_id
        return self.stream.start(model_id)

    def chunk(self, chunk: ChatChunk) -> list[bytes]:
        return self.stream.chunk(chunk)

    def finish(self, model_id: str, cost: Decimal | None = None) -> list[bytes]:
        return self.stream.finish(model_id)

    def error(self, error: GatewayError) -> list[bytes]:
        return self.stream.error(error, self.model_id)


class MessagesRenderer:
    def __init__(self) -> None:
        self.stream = anthropic.MessagesStream()

    def start(self, model_id: str) -> list[bytes]:
        return self.stream.start(model_id)

    def chunk(self, chunk: ChatChunk) -> list[bytes]:
        return self.stream.chunk(chunk)

    def finish(self, model_id: str, cost: Decimal | None = None) -> list[bytes]:
        return self.stream.finish(model_id)

    def error(self, error: GatewayError) -> list[bytes]:
        return self.stream.error(error)


async def _stream_response(
    req: ApiRequest, ctx: CallContext, inbound: Inbound, renderer: Renderer
) -> ApiResponse:
    """Fail over until a deployment yields its first chunk, then relay chunk by chunk."""
    first, rest = await pipeline.chat_stream(ctx, inbound.chat)
    assert ctx.chosen is not None
    created = first.created or int(time.time())  # some providers give no timestamp
    model_id = ctx.chosen.model_id
    state = {"status": 200}  # or a STREAM_OUTCOMES key

    async def relay() -> AsyncIterator[bytes]:
        # Events of chunks that came in one upstream read go out in one write (``more``): a
        # worker that fell behind catches up with fewer syscalls instead of one per event.
        pending: list[bytes] = []
        try:
            pending += renderer.start(model_id)
            first.created = created
            pending += renderer.chunk(first)
            if not first.more:
                yield b"".join(pending)
                pending.clear()
            async for chunk in rest:
                chunk.created = created
                pending += renderer.chunk(chunk)
                if not chunk.more and pending:
                    yield b"".join(pending)
                    pending.clear()
            # Settle before the closing events, so they can tell the client what it was charged.
            await pipeline.finish(ctx)
            pending.append(cost_comment(ctx.cost))
            pending += renderer.finish(model_id, ctx.cost)
            yield b"".join(pending)
        except ProviderError as error:
            # After the first byte there is no failover: end with an error event.
            metrics.STREAM_ERRORS.labels(ctx.route, error.kind.value).inc()
            failure = UpstreamFailed(
                f"The upstream stream from {ctx.chosen.deployment if ctx.chosen else '?'} "
                f"failed after it started ({error.kind.value}).",
                code="stream_interrupted",
            )
            state["status"] = 599  # logged as an interrupted stream
            await pipeline.finish(ctx)  # charges what was relayed
            await _count_stream_failure(req, ctx, 599)
            pending.append(cost_comment(ctx.cost))
            pending += renderer.error(failure)
            yield b"".join(pending)
        except Exception as exc:  # a bug in rendering: still end with an error event
            fields = {"request_id": req.request_id, **describe_exception(exc)}
            logger.error("stream relay failed", extra={"fields": fields})
            metrics.STREAM_ERRORS.labels(ctx.route, "internal").inc()
            state["status"] = 598
            # Settled before the last event, as on every other way out: the client (and a
            # test reading the body) sees the end only once the charge is written.
            await pipeline.finish(ctx)
            await _count_stream_failure(req, ctx, 598)
            pending.append(cost_comment(ctx.cost))
            pending += renderer.error(InternalError("The gateway failed while streaming."))
            yield b"".join(pending)

    async def on_close() -> None:
        await rest.aclose()  # cancels the upstream call if it is still running
        if not ctx.finished and state["status"] == 200:
            state["status"] = 499  # client went away
            metrics.STREAM_ERRORS.labels(ctx.route, "client_disconnect").inc()
        await pipeline.finish(ctx)
        _record(req, ctx, state["status"])
        req.log_fields["stream_status"] = state["status"]
        if state["status"] == 499:  # the others were counted before their last event
            await _count_stream_failure(req, ctx, 499)
        tracing.request_spans(req, ctx, state["status"])

    headers = {**SSE_HEADERS, **_headers(ctx, with_cost=False)}
    return ApiResponse(
        status=200, content_type=SSE, headers=headers, stream=relay(), on_close=on_close
    )


# A stream's log status -> the failure it is counted as (status, code): the upstream broke
# (the error event is a 502's), the gateway failed, the client went away.
STREAM_OUTCOMES = {
    599: (502, "stream_interrupted"),
    598: (500, "internal_error"),
    499: (499, "client_disconnect"),
}


async def _run_chat(
    req: ApiRequest,
    route: str,
    parse: Callable[[dict[str, Any]], Inbound],
    render: Callable[[Any, str], dict[str, Any]],
    renderer: Callable[[Inbound, dict[str, Any]], Renderer],
) -> ApiResponse:
    key = await _authenticate(req)
    data = parse_json_object(req.body, req.headers.get("content-type"))
    inbound = parse(data)
    ctx = _context(req, route, key, inbound)
    try:
        if inbound.chat.stream:
            return await _stream_response(req, ctx, inbound, renderer(inbound, data))
        response = await pipeline.chat_complete(ctx, inbound.chat)
    except GatewayError as error:
        _failed(req, ctx, error)
        raise
    assert ctx.chosen is not None
    _record(req, ctx, 200)
    if not response.created:  # some providers give no timestamp
        response.created = int(time.time())
    return ApiResponse.json(
        render(response, ctx.chosen.model_id), headers=_headers(ctx, with_cost=True)
    )


# ---------------------------------------------------------------- the endpoints


async def chat_completions(req: ApiRequest) -> ApiResponse:
    return await _run_chat(
        req,
        "chat",
        openai_chat.parse_chat,
        openai_chat.render_chat,
        lambda inbound, data: ChatRenderer(inbound.chat.include_usage),
    )


async def legacy_completions(req: ApiRequest) -> ApiResponse:
    return await _run_chat(
        req,
        "completions",
        completions.parse_completion,
        completions.render_completion,
        lambda inbound, data: ChatRenderer(inbound.chat.include_usage, legacy=True),
    )


async def responses_create(req: ApiRequest) -> ApiResponse:
    key = await _authenticate(req)
    data = parse_json_object(req.body, req.headers.get("content-type"))
    inbound = responses.parse_responses(data)
    shell = responses.ResponseShell(data, inbound)
    ctx = _context(req, "responses", key, inbound)
    try:
        if inbound.chat.stream:
            return await _stream_response(req, ctx, inbound, ResponsesRenderer(shell))
        response = await pipeline.chat_complete(ctx, inbound.chat)
    except GatewayError as error:
        _failed(req, ctx, error)
        raise
    assert ctx.chosen is not None
    _record(req, ctx, 200)
    body = responses.render_response(shell, response, ctx.chosen.model_id)
    return ApiResponse.json(body, headers=_headers(ctx, with_cost=True))


async def messages_create(req: ApiRequest) -> ApiResponse:
    return await _run_chat(
        req,
        "messages",
        anthropic.parse_messages,
        anthropic.render_message,
        lambda inbound, data: MessagesRenderer(),
    )


async def messages_count_tokens(req: ApiRequest) -> ApiResponse:
    """Anthropic's ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, counted by the
    routed Anthropic deployment, else estimated (``x-megarouter-token-count`` says which)."""
    key = await _authenticate(req)
    data = parse_json_object(req.body, req.headers.get("content-type"))
    inbound = anthropic.parse_count_tokens(data)
    ctx = _context(req, "count_tokens", key, inbound)
    try:
        count, source = await pipeline.count_tokens(ctx, inbound.chat)
    except GatewayError as error:
        _failed(req, ctx, error)
        raise
    _record(req, ctx, 200)
    headers = _headers(ctx, with_cost=False)
    headers["x-megarouter-token-count"] = source
    return ApiResponse.json({"input_tokens": count}, headers=headers)


async def embeddings_create(req: ApiRequest) -> ApiResponse:
    key = await _authenticate(req)
    data = parse_json_object(req.body, req.headers.get("content-type"))
    model, request, override, encoding = embeddings.parse_embeddings(data)
    ctx = CallContext(
        request_id=req.request_id,
        route="embeddings",
        key=key,
        requested_model=model,
        override=override,
        needs=frozenset({"embeddings"}),
        client_request_id="x-request-id" in req.headers,
        debug=_debug(req),
        tags=request_tags(req.headers, None),
        steps=[] if req.steps is not None else None,
    )
    req.call = ctx
    try:
        response = await pipeline.embed(ctx, request)
    except GatewayError as error:
        _failed(req, ctx, error)
        raise
    assert ctx.chosen is not None
    _record(req, ctx, 200)
    body = embeddings.render_embeddings(response, ctx.chosen.model_id, encoding)
    return ApiResponse.json(body, headers=_headers(ctx, with_cost=True))


# `created` of what has no date, in the integer the schema asks for: the routing aliases (no
# model), and a model deleted since the snapshot listing it was built.
NO_DATE = 0


def _model_json(model_id: str, owner: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


async def models_list(req: ApiRequest) -> ApiResponse:
    """The models this key may call (enabled deployments only), then the routing aliases.
    ``created``: the model's release date, else when it entered the catalog (docs/api.md)."""
    key = await _authenticate(req)
    data = [_model_json(m.canonical_id, m.provider, m.created) for m in await models_for_key(key)]
    data += [_model_json(alias, "megarouter", NO_DATE) for alias in ROUTING_ALIASES]
    return ApiResponse.json({"object": "list", "data": data})


async def models_retrieve(req: ApiRequest, model_id: str) -> ApiResponse:
    key = await _authenticate(req)
    if model_id in ROUTING_ALIASES:
        return ApiResponse.json(_model_json(model_id, "megarouter", NO_DATE))
    try:
        model = await model_for_key(key, model_id)
    except NoRoute as exc:
        raise route_error(exc) from None
    return ApiResponse.json(_model_json(model.canonical_id, model.provider, model.created))


# ---------------------------------------------------------------- dispatch

ROUTES: dict[str, tuple[str, Handler]] = {
    "/v1/chat/completions": ("POST", chat_completions),
    "/v1/completions": ("POST", legacy_completions),
    "/v1/embeddings": ("POST", embeddings_create),
    "/v1/responses": ("POST", responses_create),
    "/v1/messages": ("POST", messages_create),
    "/v1/messages/count_tokens": ("POST", messages_count_tokens),
    "/v1/models": ("GET", models_list),
}
MODELS_PREFIX = "/v1/models/"
ROUTE_LABELS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/v1/models": "models",
    "/v1/models/{model}": "models",
}


async def dispatch(req: ApiRequest) -> ApiResponse:
    """Route a ``/v1/`` request and turn every failure into an error response."""
    try:
        response = await _route(req)
    except GatewayError as error:
        response = error_response(req, error)
    except Exception as exc:
        fields = {"request_id": req.request_id, **describe_exception(exc)}
        logger.error("unhandled gateway error", extra={"fields": fields})
        response = error_response(req, InternalError("The gateway failed to handle this request."))
    if not req.recorded:  # answered before routing: bad key or input, unknown path, models
        route = ROUTE_LABELS.get(req.route or "", "other")
        metrics.REQUESTS.labels(route, str(response.status), "", "", "none").inc()
    if response.status >= 400:
        await _count_failure(req, response.status, req.log_fields.get("error_code"), charged=False)
    if response.stream is None:  # a stream's spans are written when it ends (on_close)
        tracing.request_spans(req, req.call, response.status)
    return response


async def _route(req: ApiRequest) -> ApiResponse:
    path = req.path.rstrip("/") if req.path != "/" else req.path
    if path in ROUTES:
        method, handler = ROUTES[path]
        req.route = path
        if req.method != method:
            raise MethodNotAllowed(
                f"Method {req.method} is not allowed on {path}; use {method}.",
                headers={"allow": method},
            )
        return await handler(req)
    if path.startswith(MODELS_PREFIX) and len(path) > len(MODELS_PREFIX):
        req.route = "/v1/models/{model}"
        if req.method != "GET":
            raise MethodNotAllowed(
                f"Method {req.method} is not allowed on /v1/models/{{model}}; use GET.",
                headers={"allow": "GET"},
            )
        return await models_retrieve(req, path[len(MODELS_PREFIX) :])
    raise NotFound(f"Unknown endpoint: {req.method} {_bounded(req.path)}", code="unknown_url")


def error_response(req: ApiRequest, error: GatewayError) -> ApiResponse:
    path = req.path.rstrip("/")
    anthropic_shape = path == "/v1/messages" or path.startswith("/v1/messages/")
    body = anthropic_error_json(error) if anthropic_shape else error_json(error)
    req.log_fields.setdefault("error_code", error.code)
    return ApiResponse(status=error.status, body=body, headers=dict(error.headers))


def _bounded(path: str) -> str:
    return path[:120]
