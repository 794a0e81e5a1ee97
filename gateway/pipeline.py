"""The request pipeline: one function per call shape. A call goes (docs/architecture.md)

    prepare  -> routing.engine.route_call (the plan) -> billing's admission_reserve (the hold)
    attempts -> routing.failover.run_with_failover over the plan, each an adapter call
    relay    -> (streams) admission_progress checkpoints what was relayed on the hold
    finish   -> billing's admission_settle (the charge), or admission_release (nothing answered)

Every function is called by name; there is no step table and no configuration in which a
request is served without admission. Nothing here reads or keeps request content beyond the
character counts of the prompt estimate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar, cast

import orjson
from django.conf import settings

from billing.admission import Reservation, UsageEventData
from billing.admission.service import (
    admission_progress,
    admission_release,
    admission_reserve,
    admission_settle,
    output_tokens_wanted,
)
from billing.errors import AdmissionRefused
from gateway import metrics
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    UpstreamFailed,
    refusal_error,
    refusal_layer,
    route_error,
)
from gateway.http import Timeouts
from gateway.providers.adapters import get_adapter
from gateway.providers.endpoints import endpoint_for
from gateway.providers.types import (
    RETRIABLE,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    Delta,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorKind,
    ProviderError,
    Usage,
)
from megarouter import tracing
from orgs.keys import KeyContext
from orgs.policy import PolicySpec
from routing.complexity import RequestFeatures
from routing.engine import AUTO, NoRoute, RouteCandidate, RouteDecision, RouteRequest, route_call
from routing.failover import (
    AttemptBudget,
    AttemptRecord,
    FailoverExhausted,
    FailoverResult,
    run_with_failover,
    stream_start,
)
from routing.ratelimit import deployment_limiter
from routing.stickiness import MARKED_CACHING, conversation_key, remember
from routing.tokens import PromptCounts, prompt_tokens_bound, prompt_tokens_estimate

logger = logging.getLogger("megarouter.gateway")
ZERO = Decimal(0)
T = TypeVar("T")
PROGRESS_EVERY_S = 0.5  # a stream's relayed output is checkpointed on its hold this often
CHECKPOINT_AHEAD = 64  # output tokens a checkpoint covers beyond what was relayed, at least


@dataclass(slots=True)
class Attempt:
    deployment: str
    provider: str
    model_id: str
    error: str | None = None  # ErrorKind value, None when it answered
    status: int | None = None
    retry_after: float | None = None
    elapsed_ms: float = 0.0  # the attempt's own time (a stream's: to its first content)
    ended_at: float = 0.0  # time.perf_counter() at its end


@dataclass(slots=True)
class CallContext:
    """Per-request state the steps share. Holds ids and numbers only, never content."""

    request_id: str  # the X-Request-ID (the caller's own when it sent one)
    route: str  # "chat", "completions", "responses", "messages", "embeddings"
    key: KeyContext
    requested_model: str
    override: PolicySpec | None = None  # the request's own policy (its "megarouter" object)
    needs: frozenset[str] = frozenset()
    needs_param: dict[str, str] = field(default_factory=dict)  # capability -> parameter name
    max_tokens: int | None = None
    n: int = 1  # choices requested (the output reservation scales with it)
    stream: bool = False
    # Admission: the prompt's estimate (routing, a stream's charge without usage) and upper
    # bound (the hold), and the output tokens held: the most the provider may produce.
    input_tokens_estimate: int = 0
    input_tokens_bound: int = 0
    output_tokens_reserve: int = 0
    # The id billing keys the reservation and usage record by: the request id when the gateway
    # made it, a fresh one when the caller chose it (callers' ids need not be unique).
    client_request_id: bool = False
    charge_id: str = ""
    debug: bool = False  # x-megarouter-debug: 1 asks for the route's explanation header
    failover: FailoverResult[Any] | None = None  # the answering attempt
    stream_error: str | None = None  # ErrorKind value when the upstream broke mid-stream
    started: float = field(default_factory=time.perf_counter)
    plan: RouteDecision | None = None
    admission: Reservation | None = None
    chosen: RouteCandidate | None = None
    attempts: list[Attempt] = field(default_factory=list)
    upstream_seconds: float = 0.0  # time spent waiting on providers (overhead = total - this)
    ttft_seconds: float | None = None
    usage: Usage | None = None
    # Streaming: output seen so far, for settling a stream that ended early (client gone,
    # upstream broke). A rough token estimate (characters / 4) when no usage was reported.
    generated_chars: int = 0
    content_chunks: int = 0  # chunks with content: at least one token each
    choices_done: set[int] = field(default_factory=set)
    finished: bool = False
    cost: Decimal = ZERO
    settled: bool = False
    # The caller's attribution (x-megarouter-tags, metadata): kept on the usage record
    tags: dict[str, str] = field(default_factory=dict)
    # (name, start, end) of the steps a trace shows (megarouter.tracing); None: tracing is off
    steps: list[tuple[str, float, float]] | None = None
    # auto chat: the conversation's identity (a keyed hash, routing.stickiness), to record
    # which deployment holds its prompt cache once a turn is served
    conversation: str | None = None
    cache_breakpoints: int = 0  # Anthropic cache_control marks in the request

    @property
    def organization_id(self) -> int:
        return self.key.organization_id

    @property
    def route_explain(self) -> dict[str, Any] | None:
        """The routing decision's explanation (metadata only): stored on the usage record and
        sent in the x-megarouter-route header when the caller asked for it."""
        return self.plan.explain if self.plan is not None else None

    def generated_tokens(self) -> int:
        if self.usage is not None:
            return self.usage.completion_tokens
        return (self.generated_chars + 3) // 4

    def strategy(self) -> str:
        return self.plan.strategy if self.plan is not None else "none"


# ---------------------------------------------------------------- prepare: route and admit


async def prepare(ctx: CallContext, request: ChatRequest | EmbeddingRequest) -> None:
    """Route and admit. Raises GatewayError (404 / 403 / 400 / 402 / 429 / 503) before any
    provider is called. A request that set no output limit gets the one admission held."""
    counts = prompt_counts(request)
    ctx.input_tokens_estimate = prompt_tokens_estimate(counts)
    if isinstance(request, ChatRequest):
        ctx.n = max(1, request.n or 1)
    started = time.perf_counter() if ctx.steps is not None else 0.0
    try:
        ctx.plan = await route_call(
            key=ctx.key, request=_route_request(ctx, request), override=ctx.override
        )
    except NoRoute as exc:
        raise route_error(exc) from None
    finally:
        tracing.step(ctx.steps, "route", started)
    candidates = ctx.plan.candidates
    ctx.input_tokens_bound = prompt_tokens_bound(counts, {c.info.kind for c in candidates})
    if not ctx.charge_id:
        ctx.charge_id = uuid.uuid4().hex if ctx.client_request_id else ctx.request_id
    started = time.perf_counter() if ctx.steps is not None else 0.0
    try:
        ctx.admission = await admission_reserve(
            charge_id=ctx.charge_id,
            key=ctx.key,
            prices=(c.price for c in candidates),
            input_tokens=ctx.input_tokens_bound,
            output_tokens=output_tokens_wanted(
                max_tokens=ctx.max_tokens,
                n=ctx.n,
                model_max_outputs=(c.model.max_output_tokens for c in candidates),
                embeddings=ctx.route == "embeddings",
            ),
            exact=ctx.max_tokens is not None,
            n=ctx.n,
            tags=tuple(f"{k}={v}" for k, v in ctx.tags.items()),
        )
    except AdmissionRefused as exc:
        metrics.BUDGET_REFUSALS.labels(refusal_layer(exc)).inc()
        raise refusal_error(exc) from None
    finally:
        tracing.step(ctx.steps, "admission.reserve", started)
    ctx.output_tokens_reserve = ctx.admission.output_tokens


def _output_limit(ctx: CallContext, candidate: RouteCandidate, asked: int | None) -> int | None:
    """The output limit an attempt sends upstream: the caller's, else what admission held
    (per choice), within the model's maximum output and what its context window leaves after
    the prompt (providers reject a prompt plus limit above the window)."""
    if asked is not None or ctx.route == "embeddings":
        return asked
    limit = max(1, ctx.output_tokens_reserve // ctx.n)
    model = candidate.model
    if model.max_output_tokens:
        limit = min(limit, model.max_output_tokens)
    if model.context_window:
        room = model.context_window - ctx.input_tokens_bound
        if room < 1:  # the bound is above the window: leave what the estimate leaves
            room = model.context_window - ctx.input_tokens_estimate
        limit = min(limit, max(1, room))
    return limit


def prompt_counts(request: ChatRequest | EmbeddingRequest) -> PromptCounts:
    """What the prompt is made of (lengths only): message text, tool calls, tool definitions,
    the response schema and images, in characters and UTF-8 bytes; for embeddings, the
    inputs."""
    if isinstance(request, EmbeddingRequest):
        texts = [item for item in request.input if isinstance(item, str)]
        ids = sum(len(item) for item in request.input if not isinstance(item, str))
        return PromptCounts(
            chars=sum(map(len, texts)), utf8_bytes=sum(map(_bytes, texts)), token_ids=ids,
            framed=False,
        )  # fmt: skip
    chars = nbytes = images = images_low = 0

    def add(text: str | None) -> None:
        nonlocal chars, nbytes
        if text:
            chars += len(text)
            nbytes += _bytes(text)

    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            add(content)
        elif content:
            for part in content:
                if part.type == "image":
                    images_low += part.detail == "low"
                    images += part.detail != "low"
                else:
                    add(part.text or part.thinking)
        add(message.name)
        add(message.refusal)
        for call in message.tool_calls or ():
            add(call.name)
            add(call.arguments)
    for tool in request.tools or ():
        add(tool.name)
        add(tool.description)
        if tool.parameters:
            add(orjson.dumps(tool.parameters).decode())
    if request.response_format is not None and request.response_format.schema:
        add(orjson.dumps(request.response_format.schema).decode())
    return PromptCounts(
        chars=chars,
        utf8_bytes=nbytes,
        tools=len(request.tools or ()),
        messages=len(request.messages),
        images=images,
        images_low=images_low,
    )


def _bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _route_request(ctx: CallContext, request: ChatRequest | EmbeddingRequest) -> RouteRequest:
    chat = isinstance(request, ChatRequest)
    continuing = None
    model = ctx.requested_model
    if isinstance(request, ChatRequest) and (model == AUTO or model.startswith(AUTO + ":")):
        ctx.conversation, continuing = _conversation(ctx, request)
    return RouteRequest(
        features=_features(request),
        model=ctx.requested_model,
        max_output_tokens=request.max_tokens if isinstance(request, ChatRequest) else None,
        stream=ctx.stream,
        mode="chat" if chat else "embedding",
        needs=ctx.needs,
        needs_param=ctx.needs_param,
        input_tokens=ctx.input_tokens_estimate,
        dimensions=request.dimensions if isinstance(request, EmbeddingRequest) else None,
        conversation=continuing,
    )


def _conversation(ctx: CallContext, request: ChatRequest) -> tuple[str, str | None]:
    """The conversation's identity (from its start: system and developer turns, then the first
    user turn; or the caller's ``prompt_cache_key``), and the same again when it continues (an
    assistant or tool turn, or a ``prompt_cache_key``): the only case worth a lookup."""
    start: list[str] = []
    for message in request.messages:
        start.append(message.text())
        if message.role == "user":
            break
    cache_key = request.extra.get("prompt_cache_key")
    cache_key = cache_key if isinstance(cache_key, str) and cache_key else None
    key = conversation_key(ctx.organization_id, start, cache_key)
    continuing = cache_key is not None or any(
        m.role in ("assistant", "tool") for m in request.messages
    )
    return key, key if continuing else None


def _features(request: ChatRequest | EmbeddingRequest) -> RequestFeatures:
    """The complexity features of the request (read once, never stored)."""
    if isinstance(request, EmbeddingRequest):
        texts = [item for item in request.input if isinstance(item, str)]
        return RequestFeatures.from_messages([{"role": "user", "content": " ".join(texts)}])
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        content: Any = message.content
        if isinstance(content, list):
            content = [
                {"type": "text", "text": part.text or ""}
                if part.type == "text"
                else {"type": "image_url", "image_url": {"url": part.image_url or ""}}
                for part in content
                if not part.reasoning
            ]
        calls = len(message.tool_calls) if message.tool_calls else 0
        messages.append({"role": message.role, "content": content or "", "tool_calls": calls})
    fmt = request.response_format.type if request.response_format else None
    return RequestFeatures.from_messages(
        messages, tools=bool(request.tools), response_format=fmt, max_tokens=request.max_tokens
    )


async def count_tokens(ctx: CallContext, request: ChatRequest) -> tuple[int, str]:
    """The request's input tokens and who counted them: the first routed deployment whose
    provider counts tokens (Anthropic's ``count_tokens``), trying the next on a failure, else
    the gateway's own estimate (``estimate``). Routed like the message itself (policies and
    allow-lists apply); nothing is held, charged or recorded, as the providers do not bill it."""
    ctx.input_tokens_estimate = prompt_tokens_estimate(prompt_counts(request))
    try:
        ctx.plan = await route_call(
            key=ctx.key, request=_route_request(ctx, request), override=ctx.override
        )
    except NoRoute as exc:
        raise route_error(exc) from None
    ctx.conversation = None  # nothing was served: nothing holds a cache
    snapshot = ctx.plan.snapshot
    timeouts = Timeouts.default().with_(total=settings.ROUTING_TTFT_TIMEOUT_S)
    for candidate in ctx.plan.candidates:
        adapter = get_adapter(candidate.info.kind)
        if not adapter.supports_count_tokens:
            continue
        endpoint = endpoint_for(snapshot, candidate.info)
        request.model = endpoint.model
        started = time.perf_counter()
        try:
            count = await adapter.count_tokens(endpoint, request, timeouts=timeouts)
        except ProviderError:
            continue
        finally:
            ctx.upstream_seconds += time.perf_counter() - started
        ctx.chosen = candidate
        return count, "provider"
    ctx.chosen = ctx.plan.candidates[0] if ctx.plan.candidates else None
    return ctx.input_tokens_estimate, "estimate"


# ---------------------------------------------------------------- the calls


async def chat_complete(ctx: CallContext, request: ChatRequest) -> ChatResponse:
    return await _call(ctx, request, _completion(ctx, request))


async def embed(ctx: CallContext, request: EmbeddingRequest) -> EmbeddingResponse:
    return await _call(ctx, request, _embedding(request))


def _completion(ctx: CallContext, request: ChatRequest) -> Callable[..., Awaitable[ChatResponse]]:
    asked = request.max_tokens

    def call(candidate: RouteCandidate, endpoint: Any, timeouts: Timeouts) -> Any:
        # a copy per attempt: a hedge runs beside the attempt it hedges (routing.failover)
        own = dataclasses.replace(
            request, model=endpoint.model, max_tokens=_output_limit(ctx, candidate, asked)
        )
        return get_adapter(endpoint.kind).complete(endpoint, own, timeouts=timeouts)

    return call


def _embedding(request: EmbeddingRequest) -> Callable[..., Awaitable[EmbeddingResponse]]:
    def call(candidate: RouteCandidate, endpoint: Any, timeouts: Timeouts) -> Any:
        own = dataclasses.replace(request, model=endpoint.model)  # a copy per attempt
        return get_adapter(endpoint.kind).embed(endpoint, own, timeouts=timeouts)

    return call


async def _call(
    ctx: CallContext,
    request: ChatRequest | EmbeddingRequest,
    call: Callable[..., Awaitable[T]],
) -> T:
    """One non-streaming call: admit, try the candidates with failover, settle."""
    await prepare(ctx, request)
    try:
        result = await _with_failover(ctx, _timed(ctx, call), streaming=False)
        response = result.value
        if isinstance(response, EmbeddingResponse) and not response.usage.prompt_tokens:
            # a provider that counts no embedding tokens (Gemini): charged by the estimate
            response.usage = Usage(prompt_tokens=ctx.input_tokens_estimate)
        ctx.usage = response.usage  # type: ignore[attr-defined]
        ctx.finished = True
    finally:
        # Also on a bug or a cancellation (client gone): the hold is released now.
        await finish(ctx)
    return response


def _timed(ctx: CallContext, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """An attempt for the failover loop: the adapter call at one candidate, timed upstream."""
    assert ctx.plan is not None
    snapshot = ctx.plan.snapshot

    async def attempt(candidate: RouteCandidate, budget: AttemptBudget) -> T:
        started = time.perf_counter()
        try:
            return await call(candidate, endpoint_for(snapshot, candidate.info), _timeouts(budget))
        finally:
            ctx.upstream_seconds += time.perf_counter() - started

    return attempt


async def chat_stream(
    ctx: CallContext, request: ChatRequest
) -> tuple[ChatChunk, AsyncGenerator[ChatChunk, None]]:
    """Open a stream, failing over until one deployment yields its first chunk with content.
    Returns that chunk and the rest; nothing has reached the client yet, so every failure here
    may move on. The caller iterates the rest to the end (or closes it), then calls
    :func:`finish`."""
    await prepare(ctx, request)
    try:
        result = await _with_failover(ctx, _stream_opener(ctx, request), streaming=True)
    except BaseException:
        await finish(ctx)  # nothing answered, a bug or a cancellation: release the hold
        raise
    buffered, upstream = result.value
    ctx.ttft_seconds = time.perf_counter() - ctx.started
    return buffered[0], _tracked(ctx, buffered, upstream)


Opened = tuple[list[ChatChunk], AsyncGenerator[ChatChunk, None]]


def _stream_opener(
    ctx: CallContext, request: ChatRequest
) -> Callable[[RouteCandidate, AttemptBudget], Awaitable[Opened]]:
    assert ctx.plan is not None
    snapshot = ctx.plan.snapshot
    asked = request.max_tokens

    async def attempt(candidate: RouteCandidate, budget: AttemptBudget) -> Opened:
        endpoint = endpoint_for(snapshot, candidate.info)
        request.model = endpoint.model
        request.max_tokens = _output_limit(ctx, candidate, asked)
        started = time.perf_counter()
        upstream = cast(
            AsyncGenerator[ChatChunk, None],
            get_adapter(endpoint.kind).stream(endpoint, request, timeouts=_timeouts(budget)),
        )
        try:
            # Read up to the first chunk with content: anything failing before it fails over,
            # and the time to first token counts to content (a role-only chunk is not a token).
            async with asyncio.timeout(budget.ttft_timeout_s):
                buffered, rest = await stream_start(upstream, _has_content)
        except TimeoutError:
            raise ProviderError(ErrorKind.TIMEOUT, "no content in time") from None
        finally:
            ctx.upstream_seconds += time.perf_counter() - started
        if not buffered:
            await upstream.aclose()
            raise ProviderError(ErrorKind.PROTOCOL, "the stream ended before its first chunk")
        return buffered, cast(AsyncGenerator[ChatChunk, None], rest)

    return attempt


def _has_content(chunk: ChatChunk) -> bool:
    return chunk.usage is not None or any(
        choice.delta.content
        or choice.delta.tool_calls
        or choice.finish_reason
        or choice.delta.thinking
        or choice.delta.redacted_thinking is not None
        for choice in chunk.choices
    )


# ---------------------------------------------------------------- failover


def _timeouts(budget: AttemptBudget) -> Timeouts:
    """The adapter's timeouts for one attempt: the failover loop's budget (TTFT, stall, the
    attempt's share of the total), connecting within ``PROVIDER_CONNECT_TIMEOUT``."""
    return Timeouts(
        connect=min(settings.PROVIDER_CONNECT_TIMEOUT, budget.ttft_timeout_s),
        first_byte=budget.ttft_timeout_s,
        stall=budget.stall_timeout_s,
        total=budget.attempt_timeout_s,
    )


async def _with_failover(
    ctx: CallContext,
    attempt: Callable[[RouteCandidate, AttemptBudget], Awaitable[T]],
    *,
    streaming: bool,
) -> FailoverResult[T]:
    """``routing.failover.run_with_failover`` over the plan: breaker-aware skips, Retry-After
    waits, TTFT / stall / attempt deadlines, health recorded. Raises the gateway error when
    nothing answered."""
    assert ctx.plan is not None
    try:
        result = await run_with_failover(
            ctx.plan.candidates, attempt, streaming=streaming, tokens=ctx.input_tokens_estimate
        )
    except FailoverExhausted as exhausted:
        _record_attempts(ctx, exhausted.attempts)
        last = exhausted.last if isinstance(exhausted.last, ProviderError) else None
        raise _failed(ctx, last) from None
    _record_attempts(ctx, result.attempts)
    ctx.chosen = result.candidate
    ctx.failover = result
    if result.failovers:
        metrics.FAILOVERS.labels(ctx.chosen.model_id, ctx.chosen.provider).inc(result.failovers)
    return result


def _record_attempts(ctx: CallContext, records: list[AttemptRecord]) -> None:
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
                elapsed_ms=record.elapsed_ms,
                ended_at=record.ended_at,
            )
        )
        if failed and not record.outcome.startswith("skipped"):
            metrics.UPSTREAM_ERRORS.labels(record.provider, record.outcome).inc()


def _failed(ctx: CallContext, last: ProviderError | None) -> GatewayError:
    """The error for a request nothing answered: the provider's own refusal when it said the
    request is wrong, else what was tried, at 429 / 502 / 503 / 504."""
    # A model refusing what others would take (a prefill) is the request's fault only when no
    # candidate failed for a reason of its own (down, rate limited): then the trail, at 503.
    refused_as_such = last is not None and (
        last.kind is not ErrorKind.UNSUPPORTED
        or not any(a.error in RETRIABLE_KINDS for a in ctx.attempts)
    )
    if last is not None and not last.retriable and refused_as_such:
        if last.kind in (ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_LENGTH, ErrorKind.UNSUPPORTED):
            code = "context_length_exceeded" if last.kind is ErrorKind.CONTEXT_LENGTH else None
            return InvalidRequest(
                f"The provider rejected the request: {_safe(last.message)}", code=code
            )
        if last.kind is ErrorKind.CONTENT_FILTER:
            return InvalidRequest(
                "The provider's content filter refused the request.", code="content_filter"
            )
    tried = ", ".join(
        f"{a.deployment} ({a.error}{' ' + str(a.status) if a.status else ''})" for a in ctx.attempts
    )
    kinds = {attempt.error for attempt in ctx.attempts}
    if kinds and kinds <= {ErrorKind.RATE_LIMITED.value, "skipped_rate_limited"}:
        # Every candidate said 429, or was at its deployment rate limit: the caller should
        # back off, like with a provider.
        retry_afters = [a.retry_after for a in ctx.attempts if a.retry_after is not None]
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
        "skipped_rate_limited",
        ErrorKind.UNSUPPORTED.value,  # the others were down: the one left could not take it
        "skipped_unsupported",
    }:
        status = 503
    return UpstreamFailed(
        f"Every candidate deployment failed. Tried: {tried}.",
        status=status,
        code="all_deployments_failed",
    )


RETRIABLE_KINDS = frozenset(kind.value for kind in RETRIABLE)


def _safe(message: str) -> str:
    # Provider messages can quote the prompt; keep them short and one line.
    return message.replace("\n", " ")[:200]


# ---------------------------------------------------------------- streams


async def _tracked(
    ctx: CallContext, buffered: list[ChatChunk], upstream: AsyncGenerator[ChatChunk, None]
) -> AsyncGenerator[ChatChunk, None]:
    """The rest of the stream (after ``buffered[0]``, which the caller relays first),
    counting what was generated and the time spent upstream, checkpointing it on the hold and
    stopping the stream at the hold's output limit should the provider go past it."""
    for chunk in buffered:
        _observe(ctx, chunk)
    checkpoints = _Checkpoints(ctx)  # the first chunk went out already: cover it at once
    await checkpoints.cover()
    for chunk in buffered[1:]:
        yield chunk
    waited_from = time.perf_counter()
    try:
        async for chunk in upstream:
            ctx.upstream_seconds += time.perf_counter() - waited_from
            _observe(ctx, chunk)
            if _past_hold(ctx):
                yield _cut(ctx, chunk)
                ctx.finished = True
                return
            await checkpoints.cover()
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
        if delta.content or delta.tool_calls or delta.thinking:
            ctx.content_chunks += 1
        if delta.content:
            ctx.generated_chars += len(delta.content)
        if delta.thinking:  # thinking is output, billed as such
            ctx.generated_chars += len(delta.thinking)
        for call in delta.tool_calls or ():
            ctx.generated_chars += len(call.arguments or "") + len(call.name or "")
        if choice.finish_reason is not None:
            ctx.choices_done.add(choice.index)


def _past_hold(ctx: CallContext) -> bool:
    """Has the provider produced more output than the hold covers? Counted from below (each
    chunk with content carries at least one token, and the provider's own count when it
    reports one as it goes), so an answer within its limit is never cut."""
    limit = ctx.output_tokens_reserve
    if limit <= 0 or ctx.route == "embeddings":
        return False
    reported = ctx.usage.completion_tokens if ctx.usage is not None else 0
    return max(ctx.content_chunks, reported) > limit


def _cut(ctx: CallContext, last: ChatChunk) -> ChatChunk:
    """The stream's end when the provider went past the hold: the open choices finish with
    "length" and the usage is what the hold covers (the charge cannot exceed it)."""
    logger.warning(
        "provider exceeded the output limit; stream stopped",
        extra={"fields": {"request_id": ctx.request_id, "limit": ctx.output_tokens_reserve}},
    )
    ctx.usage = Usage(
        prompt_tokens=ctx.input_tokens_estimate,
        completion_tokens=min(ctx.generated_tokens(), ctx.output_tokens_reserve),
    )
    open_choices = [i for i in range(ctx.n) if i not in ctx.choices_done]
    return ChatChunk(
        id=last.id,
        model=last.model,
        created=last.created,
        choices=[ChunkChoice(index=i, delta=Delta(), finish_reason="length") for i in open_choices],
        usage=ctx.usage,
    )


_IN_FLIGHT: set[asyncio.Task[None]] = set()  # checkpoint writes (a reference until done)


def _relayed_tokens(ctx: CallContext) -> int:
    """Output tokens relayed so far, counted from above: the larger of the chunks with content
    (one token or more each) and the characters / 4 estimate a stream without usage is
    charged by."""
    return max(ctx.content_chunks, ctx.generated_tokens())


class _Checkpoints:
    """What a stream relays is checkpointed on its hold before it goes out. Each write covers
    the tokens relayed so far and an allowance ahead (``CHECKPOINT_AHEAD`` tokens, or twice
    what the last interval relayed); it is renewed in the background every
    ``PROGRESS_EVERY_S`` or when the relay has used half of it, and the relay waits for it only
    when it caught up with the allowance (the first chunks, or a burst). Should the process
    die, reconciliation charges the last write: never less than what was relayed, at most the
    allowance more (output the provider had produced anyway). The first write also says how
    to charge it (the usage event's metadata and the price). A failed write is logged and the
    relay no longer waits for the next ones (the store is down: settle will tell)."""

    __slots__ = ("covered", "ctx", "due", "task", "waits", "written_at")

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.due = 0.0
        self.task: asyncio.Task[None] | None = None
        self.covered = 0  # tokens the last successful write covers
        self.written_at = 0  # tokens relayed when it was made
        self.waits = True

    async def cover(self) -> None:
        """Call before relaying a chunk."""
        ctx = self.ctx
        limit = ctx.output_tokens_reserve
        # Once a write covers the whole hold there is nothing left to checkpoint: a crash is
        # charged at most the hold, whatever the relayed count (from above) says.
        if ctx.admission is None or limit <= 0 or self.covered >= limit:
            return
        relayed = min(_relayed_tokens(ctx), limit)
        behind = self.waits and relayed > self.covered
        if self.task is not None and not self.task.done():
            if behind:
                await asyncio.shield(self.task)
            return
        now = time.monotonic()
        half = self.written_at + (self.covered - self.written_at) // 2
        if not (behind or now >= self.due or relayed > half):
            return
        self.due = now + PROGRESS_EVERY_S
        ahead = max(CHECKPOINT_AHEAD, 2 * (relayed - self.written_at))
        target = min(relayed + ahead, limit)
        self.task = asyncio.create_task(self._write(relayed, target))
        _IN_FLIGHT.add(self.task)
        self.task.add_done_callback(_IN_FLIGHT.discard)
        if behind:
            await asyncio.shield(self.task)

    async def _write(self, relayed: int, target: int) -> None:
        ctx = self.ctx
        assert ctx.admission is not None
        terms: dict[str, Any] = {}
        if self.covered == 0 and ctx.chosen is not None:
            terms = {
                "event": usage_event(
                    ctx, Usage(prompt_tokens=ctx.input_tokens_estimate, completion_tokens=0)
                ),
                "price": ctx.chosen.price,
            }
        if await admission_progress(ctx.admission, output_tokens=target, **terms):
            self.covered = max(self.covered, target)
            self.written_at = relayed
        else:
            self.waits = False


# ---------------------------------------------------------------- finish: settle or release


async def finish(ctx: CallContext) -> None:
    """Record the answering deployment's outcome, then charge what was used (the hold's rest
    released) or release the hold when nothing answered. Safe to call more than once; it
    runs even when the client went away (shielded from cancellation)."""
    if ctx.settled:
        return
    ctx.settled = True
    started = time.perf_counter() if ctx.steps is not None else 0.0
    try:
        await _settle(ctx)
    finally:
        tracing.step(ctx.steps, "admission.settle", started)


async def _settle(ctx: CallContext) -> None:
    if ctx.failover is not None:  # the answering deployment's outcome, for health and breakers
        if ctx.finished or ctx.stream_error is None:  # done, or the client left: not its fault
            ctx.failover.finish(ok=True, output_tokens=ctx.generated_tokens())
        else:
            ctx.failover.finish(ok=False, error_kind=ctx.stream_error)
    reservation = ctx.admission
    if reservation is None:
        return
    if ctx.chosen is None or ctx.plan is None:
        await asyncio.shield(admission_release(reservation))
        return
    if ctx.cache_breakpoints and ctx.chosen.info.kind not in MARKED_CACHING:
        ctx.plan.explain["cache_control"] = (
            f"{ctx.cache_breakpoints} breakpoint(s) not sent: {ctx.chosen.info.kind} caches "
            "prompts by itself"
        )
    if ctx.usage is None:
        # A stream that ended early (client gone, upstream broke) without a usage report: the
        # provider billed the prompt and what it generated; charge the same estimate.
        ctx.usage = Usage(
            prompt_tokens=ctx.input_tokens_estimate, completion_tokens=ctx.generated_tokens()
        )
    if ctx.chosen.tpm_limit:  # the rest of what it used, beyond the prompt estimate admitted
        rest = ctx.usage.prompt_tokens + ctx.usage.completion_tokens - ctx.input_tokens_estimate
        await asyncio.shield(deployment_limiter().used(ctx.chosen.deployment_id, rest))
    ctx.cost = await asyncio.shield(
        admission_settle(
            reservation,
            snapshot=ctx.plan.snapshot,
            model_id=ctx.chosen.model_id,
            list_price=ctx.chosen.price,
            usage=ctx.usage,
            event=usage_event(ctx, ctx.usage),
        )
    )
    if ctx.conversation is not None and (ctx.finished or ctx.stream_error is None):
        chosen = ctx.chosen
        await asyncio.shield(
            remember(
                ctx.conversation,
                model_id=chosen.model_id,
                deployment_id=chosen.deployment_id,
                kind=chosen.info.kind,
                prompt_tokens=ctx.usage.prompt_tokens,
                caches=chosen.price is not None and chosen.price.cached_input_per_token is not None,
                marked=ctx.cache_breakpoints > 0,
            )
        )


def usage_event(ctx: CallContext, usage: Usage) -> UsageEventData:
    """The usage record's metadata (never content), with the routing decision's explanation."""
    chosen, plan, attempts = ctx.chosen, ctx.plan, ctx.attempts
    routing: dict[str, Any] = {
        "strategy": plan.strategy if plan is not None else "",
        "candidates": [c.deployment for c in (plan.candidates if plan else ())][:10],
        "chosen": chosen.deployment if chosen else None,
        "attempts": [
            {"deployment": a.deployment, "error": a.error, "status": a.status} for a in attempts
        ][:10],
    }
    if plan is not None:
        routing["explain"] = plan.explain
    return UsageEventData(
        requested_model=ctx.requested_model,
        model=chosen.model_id if chosen else "",
        provider=chosen.provider if chosen else "",
        deployment=chosen.deployment if chosen else "",
        strategy=plan.strategy if plan is not None else "",
        tokens_in=usage.prompt_tokens,
        tokens_out=usage.completion_tokens,
        tokens_cached=usage.cached_tokens,
        latency_ms=int((time.perf_counter() - ctx.started) * 1000),
        ttft_ms=int(ctx.ttft_seconds * 1000) if ctx.ttft_seconds is not None else None,
        status="ok" if ctx.finished else "incomplete",
        attempts=max(1, len(attempts)),
        fallback_used=any(a.error for a in attempts),
        reference_model=(
            plan.reference_model
            if plan and plan.reference_model
            else str(settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL)
        ),
        routing=routing,
        tags=ctx.tags,
    )
