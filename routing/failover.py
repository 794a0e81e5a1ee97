"""The attempt loop: try the routed candidates in order until one answers (docs/failover.md).

Provider-agnostic: the caller passes an ``attempt(candidate, budget)`` coroutine (the gateway's
adapter call; for a stream it returns once the first chunk has arrived, so everything here
happens before the first byte reaches the client). Failures are classified through a small
protocol, the shape of ``gateway.providers.types.ProviderError``: an exception exposing
``kind`` (an ``ErrorKind`` value string), ``retriable`` and ``retry_after`` (seconds or None).
Any other exception is a bug and propagates.

Rules:

- a deployment whose breaker is open is skipped without a network call;
- retriable failures (connection, timeout, 429, 5xx, overloaded, protocol, authentication) move
  to the next candidate. The same deployment is called again (up to ``retries`` times, after an
  exponential back-off with jitter, or after its ``Retry-After``) when no other usable
  candidate remains and the failure is transient (429, 5xx, connection, protocol; a Retry-After
  of at most ``retry_after_max_s``), or when the provider asked for a short wait
  (<= ``max_retry_wait_s``) and the next candidate is another model (once). Timeouts are not retried
  in place; no wait goes past the request's deadline;
- a deployment at its RPM / TPM limit (``routing.ratelimit``) is passed over without a call;
- ``context_length`` moves on to the next candidate with a larger context window;
  ``unsupported`` (a 400 about the model, such as a refused assistant prefill) to the next
  candidate of another model;
- other non-retriable failures (bad request, content filter) stop at once;
- attempts and total time are bounded (``max_attempts``, ``max_total_s``);
- a non-streaming attempt still unanswered at its time to first content is hedged: the next
  usable candidate starts beside it and the first answer wins (``_call``).

Every outcome feeds the shared health store (live stats and breakers).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from django.conf import settings

from routing.breaker import NOT_HEALTH_FAILURES, breaker_allow, breaker_is_open
from routing.health import CLOSED, HealthStore, health_store
from routing.ratelimit import DeploymentLimiter, deployment_limiter

T = TypeVar("T")
C = TypeVar("C")

# Failures worth one more try at the same deployment (timeouts are not: they cost a full wait).
RETRY_SAME_KINDS = frozenset(
    {"rate_limited", "overloaded", "server_error", "connection", "protocol"}
)


class Failure(Protocol):
    kind: Any  # an ErrorKind (a str enum) or its string value
    retriable: bool
    retry_after: float | None


class CandidateLike(Protocol):
    deployment_id: int
    deployment: str
    model_id: str
    provider: str
    context_window: int | None


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    max_attempts: int = 4
    max_total_s: float = 300.0
    max_retry_wait_s: float = 1.0  # a Retry-After waited out rather than a fallback model
    retries: int = 2  # calls again at the same deployment after a transient failure
    backoff_s: float = 0.1  # the first retry's back-off (doubling, with jitter)
    retry_after_max_s: float = 2.0  # the longest Retry-After honoured when nothing is left
    ttft_timeout_s: float = 20.0  # a stream's first chunk with content
    stall_timeout_s: float = 30.0  # the longest gap between two stream chunks
    attempt_timeout_s: float = 120.0  # one attempt: a whole non-streaming answer

    @classmethod
    def from_settings(cls) -> FailoverConfig:
        return cls(
            max_attempts=settings.ROUTING_FAILOVER_MAX_ATTEMPTS,
            max_total_s=settings.ROUTING_FAILOVER_MAX_SECONDS,
            max_retry_wait_s=settings.ROUTING_FAILOVER_MAX_RETRY_WAIT_S,
            retries=settings.ROUTING_RETRIES,
            backoff_s=settings.ROUTING_RETRY_BACKOFF_S,
            retry_after_max_s=settings.ROUTING_RETRY_AFTER_MAX_S,
            ttft_timeout_s=settings.ROUTING_TTFT_TIMEOUT_S,
            stall_timeout_s=settings.ROUTING_STALL_TIMEOUT_S,
            attempt_timeout_s=settings.ROUTING_ATTEMPT_TIMEOUT_S,
        )


@dataclass(frozen=True, slots=True)
class AttemptBudget:
    """What one attempt may spend: pass the timeouts to the adapter."""

    number: int  # 1-based
    ttft_timeout_s: float
    stall_timeout_s: float
    attempt_timeout_s: float  # this attempt's whole budget (a non-streaming call's total)
    remaining_s: float  # until the loop's total deadline


@dataclass(slots=True)
class AttemptRecord:
    """One candidate's fate (metadata only)."""

    deployment_id: int
    deployment: str
    model_id: str
    provider: str
    # "ok", an ErrorKind value, or "skipped_breaker_open" / "skipped_context" /
    # "skipped_rate_limited"
    outcome: str
    status: int | None = None
    retry_after: float | None = None
    elapsed_ms: float = 0.0
    waited_ms: float = 0.0
    # time.perf_counter() when the record was made: the attempt's end (traces place it there)
    ended_at: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, candidate: CandidateLike, outcome: str, **fields: Any) -> AttemptRecord:
        """The record of ``candidate``'s attempt (or skip) with ``outcome``."""
        return cls(
            candidate.deployment_id,
            candidate.deployment,
            candidate.model_id,
            candidate.provider,
            outcome,
            **fields,
        )

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deployment": self.deployment,
            "model": self.model_id,
            "provider": self.provider,
            "outcome": self.outcome,
            "elapsed_ms": round(self.elapsed_ms, 2),
        }
        if self.status is not None:
            out["status"] = self.status
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        if self.waited_ms:
            out["waited_ms"] = round(self.waited_ms, 1)
        return out


class FailoverExhausted(Exception):
    """No candidate answered. ``last`` is the last failure (None when every candidate was
    skipped); ``stopped`` is True when a non-retriable failure ended the loop early."""

    def __init__(
        self, attempts: list[AttemptRecord], last: BaseException | None, *, stopped: bool
    ) -> None:
        self.attempts = attempts
        self.last = last
        self.stopped = stopped
        tried = ", ".join(f"{a.deployment}={a.outcome}" for a in attempts) or "nothing"
        super().__init__(f"every candidate failed ({tried})")

    @property
    def kind(self) -> str:
        if self.last is None:
            return "unavailable"
        return _kind(self.last)


@dataclass
class FailoverResult(Generic[T]):
    """The answer and who gave it. For a stream, call ``finish`` when it ends (it records the
    total latency, tokens per second and the outcome that counts for the breaker)."""

    value: T
    candidate: Any
    attempts: list[AttemptRecord]
    ttft_s: float
    streaming: bool
    _started: float = field(repr=False, default=0.0)
    _store: HealthStore | None = field(repr=False, default=None)
    _finished: bool = field(repr=False, default=False)

    @property
    def failovers(self) -> int:
        """Candidates passed over (failed or skipped) before the one that answered."""
        return len(self.attempts) - 1

    def finish(
        self, *, ok: bool = True, output_tokens: int | None = None, error_kind: str | None = None
    ) -> None:
        if self._finished or self._store is None:
            return
        self._finished = True
        store = self._store
        deployment_id = self.candidate.deployment_id
        elapsed = time.perf_counter() - self._started
        tps = None
        if ok and output_tokens and elapsed > self.ttft_s:
            tps = output_tokens / max(elapsed - self.ttft_s, 1e-6)
        counts = ok if (error_kind is None or error_kind not in NOT_HEALTH_FAILURES) else None
        if self.streaming:
            store.record(
                deployment_id,
                ok=counts,
                latency_ms=elapsed * 1000 if ok else None,
                tokens_per_s=tps,
            )
        elif tps is not None:
            store.record(deployment_id, ok=None, tokens_per_s=tps)
        if self.streaming:
            store.finished(deployment_id)


def _kind(exc: BaseException) -> str:
    kind = getattr(exc, "kind", None)
    return str(getattr(kind, "value", kind))


class _Timeout(Exception):
    kind = "timeout"
    retriable = True
    retry_after = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.status = None


def _usable(candidate: Any, state: _LoopState) -> str | None:
    """Why a candidate is skipped without a call (None: usable). No I/O."""
    if state.context_floor is not None:
        window = candidate.context_window
        if candidate.model_id == state.failed_model or window is None:
            return "skipped_context"
        if window <= state.context_floor:
            return "skipped_context"
    if candidate.model_id in state.unsupported:
        return "skipped_unsupported"
    if breaker_is_open(candidate.deployment_id, store=state.store):
        return "skipped_breaker_open"
    return None


async def run_with_failover(
    candidates: Sequence[Any],
    attempt: Callable[[Any, AttemptBudget], Awaitable[T]],
    *,
    streaming: bool = False,
    config: FailoverConfig | None = None,
    store: HealthStore | None = None,
    tokens: int = 0,
    limiter: DeploymentLimiter | None = None,
) -> FailoverResult[T]:
    """Try ``candidates`` (objects with ``deployment_id``, ``deployment``, ``model_id``,
    ``provider``, ``context_window``) in order. Returns the first answer with the attempts
    trail, or raises FailoverExhausted. See the module docstring for the rules.

    1. stop once the attempts or the total time are used up;
    2. pass over (and record) a candidate that is not to be called: too small a context window
       after a ``context_length`` failure, or an open breaker (``_skipped``);
    3. call it within its budget; an answer is recorded and returned (``_call``, ``_answered``);
    4. a failure is recorded, then stops the loop (non-retriable), retries the same deployment
       once or moves to the next candidate (``_failed``, ``_retry_wait``);
    5. with no candidate left, raise FailoverExhausted.

    A candidate with an ``rpm_limit`` or ``tpm_limit`` (``routing.ratelimit``) is admitted
    before each call to it with ``tokens`` (the prompt's estimate), or passed over
    (``skipped_rate_limited``, with the seconds until its window frees as ``retry_after``).
    """
    config = config or FailoverConfig.from_settings()
    store = store or health_store()
    loop = asyncio.get_running_loop()
    state = _LoopState(
        candidates, config, store, loop, deadline=loop.time() + config.max_total_s, tokens=tokens
    )
    state.limiter = limiter
    while state.index < len(candidates):
        candidate = candidates[state.index]
        if state.calls >= config.max_attempts or loop.time() >= state.deadline:
            break
        if _skipped(state, candidate) or await _over_limit(state, candidate):
            continue
        result = await _call(state, candidate, attempt, streaming=streaming)
        if result is not None:
            return result
    raise FailoverExhausted(state.attempts, state.last, stopped=False)


@dataclass(slots=True)
class _LoopState:
    """Where one ``run_with_failover`` loop stands."""

    candidates: Sequence[CandidateLike]
    config: FailoverConfig
    store: HealthStore
    loop: asyncio.AbstractEventLoop
    deadline: float  # loop time
    attempts: list[AttemptRecord] = field(default_factory=list)
    last: BaseException | None = None
    context_floor: int | None = None  # after a context_length failure: the window to exceed
    failed_model: str | None = None  # ... and the model that failed with it
    unsupported: set[str] = field(default_factory=set)  # models that refused the request as such
    calls: int = 0
    index: int = 0  # into candidates
    retried: dict[int, int] = field(default_factory=dict)  # index -> calls again at that place
    waited: float = 0.0  # seconds spent waiting out Retry-After
    tokens: int = 0  # the prompt's estimate, for deployments' token limits
    limiter: DeploymentLimiter | None = None


def _skipped(state: _LoopState, candidate: CandidateLike) -> bool:
    """Record and pass over ``candidate`` when it is not to be called (True). A retry at the
    same place goes back to the same deployment without the checks."""
    if state.index in state.retried:
        return False
    skip = _usable(candidate, state)
    if skip is None and not breaker_allow(candidate.deployment_id, store=state.store):
        skip = "skipped_breaker_open"
    if skip is None:
        return False
    state.attempts.append(AttemptRecord.of(candidate, skip))
    state.index += 1
    return True


async def _over_limit(state: _LoopState, candidate: CandidateLike) -> bool:
    """Admit the call under the deployment's RPM / TPM limits (False), or record and pass
    over ``candidate`` (True). Deployments without limits do no I/O."""
    rpm = getattr(candidate, "rpm_limit", None)
    tpm = getattr(candidate, "tpm_limit", None)
    if not rpm and not tpm:
        return False
    if state.limiter is None:
        state.limiter = deployment_limiter()
    wait = await state.limiter.acquire(
        candidate.deployment_id, rpm=rpm, tpm=tpm, tokens=state.tokens
    )
    if wait is None:
        return False
    state.attempts.append(
        AttemptRecord.of(candidate, "skipped_rate_limited", retry_after=round(wait, 3))
    )
    state.retried.pop(state.index, None)
    state.index += 1
    return True


def _budget(state: _LoopState, candidate: CandidateLike) -> tuple[AttemptBudget, float]:
    """The next attempt's budget and its deadline (loop time): its share of the time left.
    While another candidate could still be called, an attempt gets at most half of what is
    left, so a hung deployment never uses up the request: there is always room for at least
    one fallback, whatever the settings. A candidate's own ``timeouts`` (``ttft_s``,
    ``stall_s``, ``attempt_s``: set per model or deployment) replace the settings."""
    config = state.config
    own = getattr(candidate, "timeouts", None) or {}
    now = state.loop.time()
    remaining = state.deadline - now
    share = remaining / 2 if _fallback_left(state) else remaining
    attempt_s = min(own.get("attempt_s", config.attempt_timeout_s), share)
    budget = AttemptBudget(
        number=state.calls,
        ttft_timeout_s=min(own.get("ttft_s", config.ttft_timeout_s), share),
        stall_timeout_s=own.get("stall_s", config.stall_timeout_s),
        attempt_timeout_s=attempt_s,
        remaining_s=remaining,
    )
    return budget, now + attempt_s


def _fallback_left(state: _LoopState) -> bool:
    """Could a call follow this one (attempts left and a usable candidate after it)?"""
    if state.calls >= state.config.max_attempts:
        return False
    return any(_usable(c, state) is None for c in state.candidates[state.index + 1 :])


@dataclass(slots=True)
class _Running:
    """One attempt: its coroutine (bounded by its own deadline), run in place or as a task
    when it may be hedged."""

    candidate: CandidateLike
    coro: Coroutine[Any, Any, Any]
    t0: float
    trial: bool  # a half-open breaker's trial request
    task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        if self.task is None:
            self.coro.close()  # never started (a cancellation before the first await)
        else:
            self.task.cancel()


def _start(
    state: _LoopState,
    candidate: CandidateLike,
    attempt: Callable[[Any, AttemptBudget], Awaitable[T]],
) -> _Running:
    """Make one attempt at ``candidate`` within its budget (counts as a call)."""
    state.calls += 1
    budget, deadline = _budget(state, candidate)
    stats = state.store.view(candidate.deployment_id)
    trial = stats is not None and stats.state != CLOSED
    state.store.started(candidate.deployment_id)

    async def bounded() -> T:
        async with asyncio.timeout_at(deadline):
            return await attempt(candidate, budget)

    return _Running(candidate, bounded(), time.perf_counter(), trial)


async def _outcome(run: _Running) -> tuple[Any, Exception | None]:
    """The attempt's value, or its failure (awaited in place, or its finished task). An
    exception without ``kind`` is a bug and propagates."""
    try:
        return await (run.task if run.task is not None else run.coro), None
    except TimeoutError:
        return None, _Timeout("the attempt ran out of time")
    except Exception as error:
        if getattr(error, "kind", None) is None:
            raise
        return None, error


def _hedge_after(state: _LoopState, candidate: CandidateLike, streaming: bool) -> float | None:
    """When to start a hedge beside a non-streaming attempt that has not answered: after its
    time to first content (a non-streaming answer's first content comes with the whole
    answer), while another candidate could be called. None: no hedge."""
    if streaming or not _fallback_left(state):
        return None
    budget, _ = _budget(state, candidate)
    after = budget.ttft_timeout_s
    return after if after < budget.attempt_timeout_s else None


async def _hedge(
    state: _LoopState, attempt: Callable[[Any, AttemptBudget], Awaitable[T]]
) -> _Running | None:
    """Start the next usable candidate beside the one in flight (passing over and recording
    the ones that are not to be called, as the loop does), or None when there is none."""
    config, loop = state.config, state.loop
    state.index += 1
    while state.index < len(state.candidates):
        if state.calls >= config.max_attempts or loop.time() >= state.deadline:
            return None
        candidate = state.candidates[state.index]
        if _skipped(state, candidate) or await _over_limit(state, candidate):
            continue
        run = _start(state, candidate, attempt)
        run.task = asyncio.ensure_future(run.coro)
        return run
    return None


async def _call(
    state: _LoopState,
    candidate: CandidateLike,
    attempt: Callable[[Any, AttemptBudget], Awaitable[T]],
    *,
    streaming: bool,
) -> FailoverResult[T] | None:
    """One attempt at ``candidate``: the answer, or None once the failure is recorded and the
    loop moved on. A non-streaming attempt that has not answered by its time to first content
    is hedged: the next usable candidate starts beside it, the first answer wins and the
    other is cancelled (one hedge per request). An attempt that cannot be hedged is awaited in
    place (no task). An exception without ``kind`` is a bug and propagates."""
    first = _start(state, candidate, attempt)
    running = [first]
    try:
        hedge_after = _hedge_after(state, candidate, streaming)
        hedged = False
        if hedge_after is not None:
            first.task = asyncio.ensure_future(first.coro)
            done, _ = await asyncio.wait({first.task}, timeout=hedge_after)
            if not done:
                hedged = True
                hedge = await _hedge(state, attempt)
                if hedge is not None:
                    running.append(hedge)
        hedge_index = state.index
        while running:
            if len(running) == 1:
                finished = running
            else:
                tasks = {r.task for r in running}
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finished = [r for r in running if r.task in done]
            for run in list(finished):
                value, exc = await _outcome(run)
                running.remove(run)
                if exc is None:
                    await _cancel_losers(state, running, winner=run)
                    return _answered(
                        state, run.candidate, value, run.t0, trial=run.trial, streaming=streaming
                    )
                if not hedged:
                    await _failed(state, run.candidate, exc, run.t0)
                    return None
                # hedged: record it; a failure that ends the request ends the other one too
                kind = _record_failure(state, run.candidate, exc, run.t0)
                if kind not in ("context_length", "unsupported") and not getattr(
                    exc, "retriable", False
                ):
                    raise FailoverExhausted(state.attempts, state.last, stopped=True) from exc
        state.index = max(state.index, hedge_index + 1)  # both failed: past the hedge
        return None
    finally:
        # cancelled with the request, a bug, or after a failure that stops the request
        for run in running:
            run.cancel()
            state.store.finished(run.candidate.deployment_id)


async def _cancel_losers(state: _LoopState, losers: list[_Running], *, winner: _Running) -> None:
    """Cancel the attempts still in flight once ``winner`` answered. One that started before
    the winner and is still slower than it (the attempt that was hedged around) counts as a
    timeout for its deployment's health; a hedge that lost is only recorded."""
    now = time.perf_counter()
    for run in losers:
        run.cancel()
        if run.task is not None:  # a loser always runs as a task
            with contextlib.suppress(BaseException):
                await run.task
        deployment_id = run.candidate.deployment_id
        state.store.finished(deployment_id)
        elapsed = now - run.t0
        slower = run.t0 < winner.t0
        outcome = "timeout" if slower else "hedge_cancelled"
        state.attempts.append(AttemptRecord.of(run.candidate, outcome, elapsed_ms=elapsed * 1000))
        if slower:
            state.store.record(deployment_id, ok=False, urgent=True)
    losers.clear()


def _answered(
    state: _LoopState,
    candidate: CandidateLike,
    value: T,
    t0: float,
    *,
    trial: bool,
    streaming: bool,
) -> FailoverResult[T]:
    """Record the answer (a stream's TTFT, a whole call's latency) and wrap it. A stream's
    deployment stays in flight until ``FailoverResult.finish``."""
    elapsed = time.perf_counter() - t0
    store = state.store
    deployment_id = candidate.deployment_id
    state.attempts.append(
        AttemptRecord.of(candidate, "ok", elapsed_ms=elapsed * 1000, waited_ms=state.waited * 1000)
    )
    if streaming:
        store.record(
            deployment_id, ok=True if trial else None, ttft_ms=elapsed * 1000, urgent=trial
        )
    else:
        store.record(deployment_id, ok=True, latency_ms=elapsed * 1000, urgent=trial)
        store.finished(deployment_id)
    return FailoverResult(
        value=value,
        candidate=candidate,
        attempts=state.attempts,
        ttft_s=elapsed,
        streaming=streaming,
        _started=t0,
        _store=store,
    )


def _record_failure(state: _LoopState, candidate: CandidateLike, exc: Exception, t0: float) -> str:
    """Record a failed attempt (its trail entry, its deployment's health, what it says about
    the candidates after it) and return its kind."""
    elapsed = time.perf_counter() - t0
    kind = _kind(exc)
    retry_after = getattr(exc, "retry_after", None)
    deployment_id = candidate.deployment_id
    state.attempts.append(
        AttemptRecord.of(
            candidate,
            kind,
            status=getattr(exc, "status", None),
            retry_after=retry_after,
            elapsed_ms=elapsed * 1000,
        )
    )
    state.store.finished(deployment_id)
    if kind not in NOT_HEALTH_FAILURES:
        state.store.record(deployment_id, ok=False, urgent=True)
    state.last = exc
    if kind == "context_length":
        window = candidate.context_window or 0
        state.context_floor = max(state.context_floor or 0, window)
        state.failed_model = candidate.model_id
    elif kind == "unsupported":
        state.unsupported.add(candidate.model_id)
    return kind


async def _failed(state: _LoopState, candidate: CandidateLike, exc: Exception, t0: float) -> None:
    """Record the failure, then move the loop: past ``candidate`` (to a larger context window
    after ``context_length``, to another model after ``unsupported``), or back to it once after
    a short wait (``_retry_wait``). Raises FailoverExhausted when the failure is not
    retriable."""
    kind = _record_failure(state, candidate, exc, t0)
    retry_after = getattr(exc, "retry_after", None)
    if kind in ("context_length", "unsupported"):
        state.index += 1
        return
    if not getattr(exc, "retriable", False):
        raise FailoverExhausted(state.attempts, state.last, stopped=True) from exc
    wait = _retry_wait(state, candidate, kind, retry_after)
    if wait is None:
        state.index += 1
        return
    state.retried[state.index] = state.retried.get(state.index, 0) + 1
    if wait:
        await asyncio.sleep(wait)
        state.waited += wait
        state.attempts[-1].waited_ms = wait * 1000


def _retry_wait(
    state: _LoopState, candidate: CandidateLike, kind: str, retry_after: float | None
) -> float | None:
    """Seconds to wait before calling ``candidate`` again (at most ``retries`` times), or None
    to move on. With no usable candidate left, a transient failure is retried after an
    exponential back-off with jitter, or after the provider's ``Retry-After`` when that is at
    most ``retry_after_max_s``; when the next candidate is another model, a short Retry-After
    (<= ``max_retry_wait_s``) is waited out once rather than falling back. Never past the request's
    deadline. No I/O."""
    config = state.config
    done = state.retried.get(state.index, 0)
    if kind not in RETRY_SAME_KINDS or done >= config.retries:
        return None
    if state.calls >= config.max_attempts:
        return None
    following = next(
        (c for c in state.candidates[state.index + 1 :] if _usable(c, state) is None),
        None,
    )
    if following is None:
        limit = config.retry_after_max_s
    elif retry_after is not None and following.model_id != candidate.model_id and not done:
        limit = config.max_retry_wait_s  # waiting a moment (once) beats another model
    else:
        return None
    if retry_after is not None and retry_after > limit:
        return None
    wait = max(retry_after or 0.0, backoff_s(config.backoff_s, done))
    if state.loop.time() + wait >= state.deadline:
        return None
    return wait


def backoff_s(base: float, retries_done: int) -> float:
    """Exponential back-off with equal jitter: half of ``base * 2**n`` plus a random share of
    the other half, so concurrent retries spread out but none comes back at once."""
    cap = base * 2**retries_done
    return cap / 2 + _jitter.uniform(0, cap / 2)


_jitter = random.Random()  # noqa: S311 (spreading retries, not secrets)


async def stream_start(
    stream: AsyncIterator[C], has_content: Callable[[C], bool]
) -> tuple[list[C], AsyncIterator[C]]:
    """For an ``attempt`` that streams: read ``stream`` until the first chunk with content (or
    its end), so the attempt fails (and fails over) on anything that happens before the client
    would see a byte. Returns the chunks read so far and the stream to relay the rest from.
    On failure the stream is closed."""
    buffered: list[C] = []
    try:
        async for chunk in stream:
            buffered.append(chunk)
            if has_content(chunk):
                break
    except BaseException:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        raise
    return buffered, stream
