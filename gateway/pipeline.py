"""The request pipeline: one function per call shape, with the steps the later branches plug
into. A request goes

    authenticate (api layer) -> route -> admit -> call with failover -> settle

``route``, ``admit`` and ``settle`` are the seams: :data:`STEPS` holds the implementation in
force. Today ``route`` is the interim policy in :mod:`gateway.routing_interim`; ``admit`` admits
everything and ``settle`` records metrics. The routing-engine and billing branches replace
them by assigning their own functions (``STEPS.route = ...``) in their AppConfig.ready, with
these signatures; nothing else in the gateway changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

from gateway import metrics
from gateway.errors import GatewayError, InvalidRequest, RateLimited, UpstreamFailed
from gateway.providers.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Endpoint,
    ErrorKind,
    ProviderError,
    Usage,
)
from gateway.wire.common import RoutingOverride

ZERO = Decimal(0)


# ---------------------------------------------------------------- what flows between the steps


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment the call may go to, with what settle needs to price it."""

    model_id: str  # canonical catalog id, e.g. "openai/gpt-5"
    provider: str  # provider slug
    deployment: str  # deployment name (metrics, the attempts trail)
    endpoint: Endpoint
    input_per_token: Decimal = ZERO
    output_per_token: Decimal = ZERO
    cached_input_per_token: Decimal | None = None
    cache_write_per_token: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        """List price of ``usage`` at this deployment's model, in US dollars."""
        cached = usage.cached_tokens
        written = usage.cache_write_tokens
        uncached = max(0, usage.prompt_tokens - cached - written)
        cached_price = (
            self.cached_input_per_token
            if self.cached_input_per_token is not None
            else self.input_per_token
        )
        write_price = (
            self.cache_write_per_token
            if self.cache_write_per_token is not None
            else self.input_per_token
        )
        return (
            uncached * self.input_per_token
            + cached * cached_price
            + written * write_price
            + usage.completion_tokens * self.output_per_token
        )


@dataclass(slots=True)
class RoutePlan:
    strategy: str  # "fixed" for a named model, else balanced / cost / latency / availability
    candidates: list[Candidate]


@dataclass(slots=True)
class Attempt:
    deployment: str
    provider: str
    model_id: str
    error: str | None = None  # ErrorKind value, None when it answered
    status: int | None = None
    retry_after: float | None = None


@dataclass(slots=True)
class CallContext:
    """Per-request state the steps share. Holds ids and numbers only, never content."""

    request_id: str
    route: str  # "chat", "completions", "responses", "messages", "embeddings"
    key: Any  # the orgs key auth context
    requested_model: str
    override: RoutingOverride | None = None
    needs: frozenset[str] = frozenset()
    needs_param: dict[str, str] = field(default_factory=dict)  # capability -> parameter name
    max_tokens: int | None = None
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    plan: RoutePlan | None = None
    admission: Any = None
    chosen: Candidate | None = None
    attempts: list[Attempt] = field(default_factory=list)
    upstream_seconds: float = 0.0  # time spent waiting on providers (overhead = total - this)
    ttft_seconds: float | None = None
    usage: Usage | None = None
    # Streaming: output seen so far, for settling a stream that ended early (client gone,
    # upstream broke). A rough token estimate (characters / 4) when no usage was reported.
    generated_chars: int = 0
    finished: bool = False
    cost: Decimal = ZERO
    settled: bool = False

    @property
    def organization_id(self) -> Any:
        return getattr(self.key, "organization_id", None)

    def generated_tokens(self) -> int:
        if self.usage is not None:
            return self.usage.completion_tokens
        return (self.generated_chars + 3) // 4

    def strategy(self) -> str:
        return self.plan.strategy if self.plan is not None else "none"


@dataclass(slots=True)
class Steps:
    route: Callable[..., Awaitable[RoutePlan]]
    admit: Callable[..., Awaitable[Any]]
    settle: Callable[..., Awaitable[None]]


async def admit_all(*, ctx: CallContext, plan: RoutePlan) -> None:
    """Interim admission: no budgets yet (billing branch). Returns the reservation handle."""
    return None


async def settle_record(*, ctx: CallContext) -> None:
    """Interim settle: the cost is computed (ctx.cost) and reported in metrics only."""
    return None


async def _route_interim(**kwargs: Any) -> RoutePlan:
    from gateway.routing_interim import route_interim

    return await route_interim(**kwargs)


STEPS = Steps(route=_route_interim, admit=admit_all, settle=settle_record)


# ---------------------------------------------------------------- the pipeline


async def prepare(ctx: CallContext, request: ChatRequest | EmbeddingRequest) -> None:
    """Route and admit. Raises GatewayError (404 / 403 / 400 / 402 / 429) before any call."""
    ctx.plan = await STEPS.route(ctx=ctx, request=request)
    if not ctx.plan.candidates:
        raise UpstreamFailed(
            f"No deployment is available for model '{ctx.requested_model}'.",
            status=503,
            code="no_deployment",
        )
    ctx.admission = await STEPS.admit(ctx=ctx, plan=ctx.plan)


def _failed(ctx: CallContext, last: ProviderError | None) -> GatewayError:
    retry_afters = [a.retry_after for a in ctx.attempts if a.retry_after is not None]
    tried = ", ".join(
        f"{a.deployment} ({a.error}{' ' + str(a.status) if a.status else ''})" for a in ctx.attempts
    )
    if last is not None and not last.retriable:
        if last.kind in (ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_LENGTH):
            code = "context_length_exceeded" if last.kind is ErrorKind.CONTEXT_LENGTH else None
            return InvalidRequest(
                f"The provider rejected the request: {_safe(last.message)}", code=code
            )
        if last.kind is ErrorKind.CONTENT_FILTER:
            return InvalidRequest(
                "The provider's content filter refused the request.", code="content_filter"
            )
    kinds = {attempt.error for attempt in ctx.attempts}
    if kinds == {ErrorKind.RATE_LIMITED.value}:
        # Every candidate said 429: the caller should back off, like with a provider.
        return RateLimited(
            f"Every candidate deployment is rate limited. Tried: {tried}.",
            retry_after=min(retry_afters) if retry_afters else None,
            code="upstream_rate_limited",
        )
    status = 502
    if kinds == {ErrorKind.TIMEOUT.value}:
        status = 504
    elif kinds and kinds <= {ErrorKind.RATE_LIMITED.value, ErrorKind.OVERLOADED.value}:
        status = 503
    return UpstreamFailed(
        f"Every candidate deployment failed. Tried: {tried}.",
        status=status,
        code="all_deployments_failed",
    )


def _safe(message: str) -> str:
    # Provider messages can quote the prompt; keep them short and one line.
    return message.replace("\n", " ")[:200]


def _record_failure(ctx: CallContext, candidate: Candidate, error: ProviderError) -> None:
    ctx.attempts.append(
        Attempt(
            deployment=candidate.deployment,
            provider=candidate.provider,
            model_id=candidate.model_id,
            error=error.kind.value,
            status=error.status,
            retry_after=error.retry_after,
        )
    )
    metrics.UPSTREAM_ERRORS.labels(candidate.provider, error.kind.value).inc()


def _record_success(ctx: CallContext, candidate: Candidate) -> None:
    ctx.attempts.append(
        Attempt(
            deployment=candidate.deployment,
            provider=candidate.provider,
            model_id=candidate.model_id,
        )
    )
    ctx.chosen = candidate
    if len(ctx.attempts) > 1:
        metrics.FAILOVERS.labels(candidate.model_id, candidate.provider).inc(len(ctx.attempts) - 1)


async def chat_complete(ctx: CallContext, request: ChatRequest) -> ChatResponse:
    from gateway.providers.base import get_adapter

    await prepare(ctx, request)
    assert ctx.plan is not None
    last: ProviderError | None = None
    for candidate in ctx.plan.candidates:
        request.model = candidate.endpoint.model
        started = time.perf_counter()
        try:
            response = await get_adapter(candidate.endpoint.kind).complete(
                candidate.endpoint, request
            )
        except ProviderError as error:
            ctx.upstream_seconds += time.perf_counter() - started
            _record_failure(ctx, candidate, error)
            last = error
            if not error.retriable:
                break
            continue
        ctx.upstream_seconds += time.perf_counter() - started
        _record_success(ctx, candidate)
        ctx.usage = response.usage
        ctx.finished = True
        await finish(ctx)
        return response
    await finish(ctx)
    raise _failed(ctx, last)


async def embed(ctx: CallContext, request: EmbeddingRequest) -> EmbeddingResponse:
    from gateway.providers.base import get_adapter

    await prepare(ctx, request)
    assert ctx.plan is not None
    last: ProviderError | None = None
    for candidate in ctx.plan.candidates:
        request.model = candidate.endpoint.model
        started = time.perf_counter()
        try:
            response = await get_adapter(candidate.endpoint.kind).embed(candidate.endpoint, request)
        except ProviderError as error:
            ctx.upstream_seconds += time.perf_counter() - started
            _record_failure(ctx, candidate, error)
            last = error
            if not error.retriable:
                break
            continue
        ctx.upstream_seconds += time.perf_counter() - started
        _record_success(ctx, candidate)
        ctx.usage = response.usage
        ctx.finished = True
        await finish(ctx)
        return response
    await finish(ctx)
    raise _failed(ctx, last)


async def chat_stream(
    ctx: CallContext, request: ChatRequest
) -> tuple[ChatChunk, AsyncGenerator[ChatChunk, None]]:
    """Open a stream, failing over until one deployment yields its first chunk. Returns that
    chunk and the rest; nothing has reached the client yet, so every failure here may move on.
    The caller must iterate the rest to the end (or close it) and then call :func:`finish`."""
    from gateway.providers.base import get_adapter

    await prepare(ctx, request)
    assert ctx.plan is not None
    last: ProviderError | None = None
    for candidate in ctx.plan.candidates:
        request.model = candidate.endpoint.model
        started = time.perf_counter()
        upstream = cast(
            AsyncGenerator[ChatChunk, None],
            get_adapter(candidate.endpoint.kind).stream(candidate.endpoint, request),
        )
        try:
            first = await anext(upstream)
        except (ProviderError, StopAsyncIteration) as exc:
            await upstream.aclose()
            ctx.upstream_seconds += time.perf_counter() - started
            error = (
                exc
                if isinstance(exc, ProviderError)
                else ProviderError(ErrorKind.PROTOCOL, "the stream ended before its first chunk")
            )
            _record_failure(ctx, candidate, error)
            last = error
            if not error.retriable:
                break
            continue
        now = time.perf_counter()
        ctx.ttft_seconds = now - ctx.started
        _record_success(ctx, candidate)
        return first, _tracked(ctx, first, upstream, started)
    await finish(ctx)
    raise _failed(ctx, last)


async def _tracked(
    ctx: CallContext, first: ChatChunk, upstream: AsyncGenerator[ChatChunk, None], started: float
) -> AsyncGenerator[ChatChunk, None]:
    """The rest of the stream, counting what was generated and the time spent upstream."""
    _observe(ctx, first)
    waited_from = time.perf_counter()
    try:
        async for chunk in upstream:
            ctx.upstream_seconds += time.perf_counter() - waited_from
            _observe(ctx, chunk)
            yield chunk
            waited_from = time.perf_counter()
        ctx.finished = True
    finally:
        ctx.upstream_seconds += time.perf_counter() - waited_from
        await upstream.aclose()


def _observe(ctx: CallContext, chunk: ChatChunk) -> None:
    if chunk.usage is not None:
        ctx.usage = chunk.usage
    for choice in chunk.choices:
        delta = choice.delta
        if delta.content:
            ctx.generated_chars += len(delta.content)
        for call in delta.tool_calls or ():
            ctx.generated_chars += len(call.arguments or "") + len(call.name or "")


async def finish(ctx: CallContext) -> None:
    """Price what was used and run the settle step. Safe to call once per request; it runs
    even when the client went away (shielded from cancellation)."""
    if ctx.settled:
        return
    ctx.settled = True
    if ctx.chosen is not None:
        usage = ctx.usage
        if usage is None:
            usage = Usage(completion_tokens=ctx.generated_tokens())
        ctx.cost = ctx.chosen.cost(usage)
    await asyncio.shield(STEPS.settle(ctx=ctx))
