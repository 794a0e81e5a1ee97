"""The request pipeline: one function per call shape, with the steps the later branches plug
into. A request goes

    authenticate (api layer) -> route -> admit -> call with failover -> settle

``route``, ``admit`` and ``settle`` are the seams: :data:`STEPS` holds the implementation in
force, installed by ``GatewayConfig.ready``: ``route`` is the routing engine
(:mod:`gateway.routing_step`), ``admit`` and ``settle`` are billing's reservation and charge
(:mod:`gateway.admission`). The defaults below (interim router, admit everything, charge
nothing) are what runs without them. The attempts go through
``routing.failover.run_with_failover`` (breakers, Retry-After, TTFT / stall deadlines).
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
    # For the failover loop (routing.failover): health / breaker key and context window.
    deployment_id: int = 0
    context_window: int | None = None

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

    request_id: str  # the X-Request-ID (the caller's own when it sent one)
    route: str  # "chat", "completions", "responses", "messages", "embeddings"
    key: Any  # the orgs key auth context
    requested_model: str
    override: RoutingOverride | None = None
    needs: frozenset[str] = frozenset()
    needs_param: dict[str, str] = field(default_factory=dict)  # capability -> parameter name
    max_tokens: int | None = None
    n: int = 1  # choices requested (the output reservation scales with it)
    stream: bool = False
    # Admission: the prompt-size estimate (set by prepare) and the output tokens reserved.
    input_tokens_estimate: int | None = None
    output_tokens_reserve: int = 0
    # The id billing keys the reservation and usage record by: the request id when the gateway
    # made it, a fresh one when the caller chose it (callers' ids need not be unique).
    client_request_id: bool = False
    charge_id: str = ""
    # Routing: the engine's decision explanation (metadata only), returned in the
    # x-megarouter-route header when the caller sent x-megarouter-debug: 1.
    route_explain: dict[str, Any] | None = None
    # The canonical model id savings are measured against (the effective policy's reference
    # model, else the default; set by the route step, recorded on the usage event).
    reference_model: str = ""
    debug: bool = False
    failover: Any = None  # routing.failover.FailoverResult of the answering attempt
    stream_error: str | None = None  # ErrorKind value when the upstream broke mid-stream
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
    from gateway.admission import input_tokens_estimate

    ctx.input_tokens_estimate = input_tokens_estimate(request)
    if isinstance(request, ChatRequest):
        ctx.n = max(1, request.n or 1)
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
    elif kinds and kinds <= {
        ErrorKind.RATE_LIMITED.value,
        ErrorKind.OVERLOADED.value,
        "skipped_breaker_open",  # known down: the circuit breaker skipped it without a call
    }:
        status = 503
    return UpstreamFailed(
        f"Every candidate deployment failed. Tried: {tried}.",
        status=status,
        code="all_deployments_failed",
    )


def _safe(message: str) -> str:
    # Provider messages can quote the prompt; keep them short and one line.
    return message.replace("\n", " ")[:200]


async def chat_complete(ctx: CallContext, request: ChatRequest) -> ChatResponse:
    return cast(ChatResponse, await _call(ctx, request, "complete"))


async def embed(ctx: CallContext, request: EmbeddingRequest) -> EmbeddingResponse:
    return cast(EmbeddingResponse, await _call(ctx, request, "embed"))


async def _call(ctx: CallContext, request: ChatRequest | EmbeddingRequest, method: str) -> Any:
    """One non-streaming call: admit, try the candidates with failover, settle.
    ``method`` names the adapter call (``complete`` or ``embed``)."""
    await prepare(ctx, request)
    try:
        return await _call_attempts(ctx, request, method)
    except BaseException:
        # A bug or a cancellation (client gone): release the hold now, not at reconcile.
        await finish(ctx)
        raise


async def _call_attempts(
    ctx: CallContext, request: ChatRequest | EmbeddingRequest, method: str
) -> Any:
    from gateway.providers.base import get_adapter

    async def attempt(candidate: Candidate, budget: Any) -> Any:
        request.model = candidate.endpoint.model
        started = time.perf_counter()
        try:
            call = getattr(get_adapter(candidate.endpoint.kind), method)
            return await call(candidate.endpoint, request, timeouts=_timeouts(budget))
        finally:
            ctx.upstream_seconds += time.perf_counter() - started

    result = await _with_failover(ctx, attempt, streaming=False)
    response = result.value
    ctx.usage = response.usage
    ctx.finished = True
    await finish(ctx)
    return response


async def chat_stream(
    ctx: CallContext, request: ChatRequest
) -> tuple[ChatChunk, AsyncGenerator[ChatChunk, None]]:
    """Open a stream, failing over until one deployment yields its first chunk. Returns that
    chunk and the rest; nothing has reached the client yet, so every failure here may move on.
    The caller must iterate the rest to the end (or close it) and then call :func:`finish`."""
    await prepare(ctx, request)
    try:
        return await _stream_attempts(ctx, request)
    except BaseException:
        # A bug or a cancellation (client gone): release the hold now, not at reconcile.
        await finish(ctx)
        raise


async def _stream_attempts(
    ctx: CallContext, request: ChatRequest
) -> tuple[ChatChunk, AsyncGenerator[ChatChunk, None]]:
    from gateway.providers.base import get_adapter
    from routing.failover import stream_start

    async def attempt(
        candidate: Candidate, budget: Any
    ) -> tuple[list[ChatChunk], AsyncGenerator[ChatChunk, None]]:
        request.model = candidate.endpoint.model
        started = time.perf_counter()
        upstream = cast(
            AsyncGenerator[ChatChunk, None],
            get_adapter(candidate.endpoint.kind).stream(
                candidate.endpoint, request, timeouts=_timeouts(budget)
            ),
        )
        try:
            # Read up to the first chunk with content: anything failing before it fails over.
            buffered, rest = await stream_start(upstream, _has_content)
        finally:
            ctx.upstream_seconds += time.perf_counter() - started
        if not buffered:
            await upstream.aclose()
            raise ProviderError(ErrorKind.PROTOCOL, "the stream ended before its first chunk")
        return buffered, cast(AsyncGenerator[ChatChunk, None], rest)

    result = await _with_failover(ctx, attempt, streaming=True)
    buffered, upstream = result.value
    ctx.ttft_seconds = time.perf_counter() - ctx.started
    return buffered[0], _tracked(ctx, buffered, upstream)


def _has_content(chunk: ChatChunk) -> bool:
    return chunk.usage is not None or any(
        choice.delta.content or choice.delta.tool_calls or choice.finish_reason
        for choice in chunk.choices
    )


def _timeouts(budget: Any) -> Any:
    """The adapter's timeouts for one attempt: the provider defaults (PROVIDER_*), tightened
    by the failover loop's budget (TTFT, stall, the attempt's share of the total)."""
    from gateway.http import Timeouts

    base = Timeouts.default()
    return base.with_(
        connect=min(base.connect, budget.ttft_timeout_s),
        first_byte=min(base.first_byte, budget.ttft_timeout_s),
        stall=min(base.stall, budget.stall_timeout_s),
        total=min(base.total, budget.attempt_timeout_s),
    )


async def _with_failover(ctx: CallContext, attempt: Any, *, streaming: bool) -> Any:
    """``routing.failover.run_with_failover`` over the plan: breaker-aware skips, Retry-After
    waits, TTFT / stall / attempt deadlines, health recorded. Raises the gateway error when
    nothing answered (after settling: the hold is released)."""
    from routing.failover import FailoverExhausted, run_with_failover

    assert ctx.plan is not None
    try:
        result = await run_with_failover(ctx.plan.candidates, attempt, streaming=streaming)
    except FailoverExhausted as exhausted:
        _record_attempts(ctx, exhausted.attempts)
        await finish(ctx)
        last = exhausted.last if isinstance(exhausted.last, ProviderError) else None
        raise _failed(ctx, last) from None
    _record_attempts(ctx, result.attempts)
    ctx.chosen = result.candidate
    ctx.failover = result
    if result.failovers:
        metrics.FAILOVERS.labels(ctx.chosen.model_id, ctx.chosen.provider).inc(result.failovers)
    return result


def _record_attempts(ctx: CallContext, records: list[Any]) -> None:
    for record in records:
        failed = record.outcome != "ok"
        ctx.attempts.append(
            Attempt(
                deployment=record.deployment,
                provider=record.provider,
                model_id=record.model_id,
                error=record.outcome if failed else None,
                status=record.status,
                retry_after=record.retry_after,
            )
        )
        if failed and not record.outcome.startswith("skipped"):
            metrics.UPSTREAM_ERRORS.labels(record.provider, record.outcome).inc()


async def _tracked(
    ctx: CallContext, buffered: list[ChatChunk], upstream: AsyncGenerator[ChatChunk, None]
) -> AsyncGenerator[ChatChunk, None]:
    """The rest of the stream (after ``buffered[0]``, which the caller relays first),
    counting what was generated and the time spent upstream."""
    for chunk in buffered:
        _observe(ctx, chunk)
    for chunk in buffered[1:]:
        yield chunk
    waited_from = time.perf_counter()
    try:
        async for chunk in upstream:
            ctx.upstream_seconds += time.perf_counter() - waited_from
            _observe(ctx, chunk)
            yield chunk
            waited_from = time.perf_counter()
        ctx.finished = True
    except ProviderError as error:
        ctx.stream_error = error.kind.value
        raise
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
    if ctx.failover is not None:  # the answering deployment's outcome, for health and breakers
        if ctx.finished or ctx.stream_error is None:  # done, or the client left: not its fault
            ctx.failover.finish(ok=True, output_tokens=ctx.generated_tokens())
        else:
            ctx.failover.finish(ok=False, error_kind=ctx.stream_error)
    if ctx.chosen is not None:
        usage = ctx.usage
        if usage is None:
            usage = Usage(completion_tokens=ctx.generated_tokens())
        ctx.cost = ctx.chosen.cost(usage)
    await asyncio.shield(STEPS.settle(ctx=ctx))
