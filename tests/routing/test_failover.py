"""The failover loop against the real provider simulator through the real adapters: one test
per fault case of docs/failover.md (no mocks)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from gateway.providers.types import ChatRequest, ErrorKind, Message, ProviderError
from routing.failover import FailoverConfig, FailoverExhausted, run_with_failover
from routing.health import HealthConfig
from tests.routing.simulated import (
    candidate,
    chat,
    complete_attempt,
    fault_id,
    make_store,
    stream_attempt,
    text_of,
)

pytestmark = pytest.mark.usefixtures("close_clients")

FAST = FailoverConfig(
    max_attempts=4,
    max_total_s=10.0,
    max_retry_wait_s=1.0,
    ttft_timeout_s=0.5,
    stall_timeout_s=0.4,
    attempt_timeout_s=0.5,
    retry_after_max_s=2.0,
)


@pytest.fixture
def store(stores):
    made = make_store(HealthConfig(failures_to_open=3, cooldown_s=0.3, refresh_interval=0.0))
    stores.append(made)
    return made


def outcomes(result_or_error) -> list[str]:
    return [a.outcome for a in result_or_error.attempts]


async def test_429_with_retry_after_2_fails_over_without_waiting(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=429~retry_after=2~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b~tokens=7", provider="sim-b")
    started = time.perf_counter()
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert time.perf_counter() - started < 0.9  # 2 s is above max_retry_wait_s: no wait
    assert result.candidate is backup
    assert outcomes(result) == ["rate_limited", "ok"]
    assert result.attempts[0].status == 429
    assert result.attempts[0].retry_after == 2.0
    assert result.attempts[0].waited_ms == 0
    assert result.value.usage.prompt_tokens == 5
    assert result.value.usage.completion_tokens == 7


async def test_short_retry_after_fails_over_when_same_model_elsewhere(simulator_url, store):
    fid = fault_id()
    first = candidate(simulator_url, 1, f"gpt-a~fault=429~retry_after_ms=800~id={fid}")
    second = candidate(simulator_url, 2, "gpt-a", provider="sim-b", model_id="sim-a/gpt-a")
    started = time.perf_counter()
    result = await run_with_failover(
        [first, second], complete_attempt(chat()), config=FAST, store=store
    )
    assert time.perf_counter() - started < 0.5  # the same model elsewhere is not worse
    assert outcomes(result) == ["rate_limited", "ok"]
    assert result.candidate is second


async def test_persistent_429_everywhere_exhausts_with_rate_limited(simulator_url, store):
    fid = fault_id()
    a = candidate(simulator_url, 1, f"gpt-a~fault=429~retry_after=5~id={fid}a")
    b = candidate(simulator_url, 2, f"gpt-b~fault=429~retry_after=5~id={fid}b", provider="sim-b")
    with pytest.raises(FailoverExhausted) as caught:
        await run_with_failover([a, b], complete_attempt(chat()), config=FAST, store=store)
    assert outcomes(caught.value) == ["rate_limited", "rate_limited"]
    assert caught.value.kind == "rate_limited"
    assert caught.value.stopped is False
    assert [a.retry_after for a in caught.value.attempts] == [5.0, 5.0]


async def test_500_once_with_no_other_candidate_retries_the_same_deployment_once(
    simulator_url, store
):
    fid = fault_id()
    only = candidate(simulator_url, 1, f"gpt-a~fault=500~times=1~id={fid}")
    result = await run_with_failover([only], complete_attempt(chat()), config=FAST, store=store)
    assert outcomes(result) == ["server_error", "ok"]
    assert result.attempts[0].status == 500


async def test_500_once_moves_to_the_next_provider(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=500~times=1~retry_after=3~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert outcomes(result) == ["server_error", "ok"]
    assert result.candidate is backup


async def test_persistent_503_fails_over_and_counts_towards_the_breaker(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=503~retry_after=3~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    for expected_failures in (1, 2):
        result = await run_with_failover(
            [primary, backup], complete_attempt(chat()), config=FAST, store=store
        )
        assert outcomes(result) == ["overloaded", "ok"]
        assert store.view(1).consecutive_failures == expected_failures
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert store.view(1).state == 1  # open after 3 consecutive failures
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert outcomes(result) == ["skipped_breaker_open", "ok"]
    assert result.attempts[0].elapsed_ms == 0.0


async def test_connection_reset_before_headers(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=reset~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert outcomes(result) == ["connection", "ok"]
    assert result.candidate is backup


async def test_connection_refused(simulator_url, store):
    dead = candidate(simulator_url, 1, "gpt-a", base_url="http://127.0.0.1:9/openai/v1")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    result = await run_with_failover(
        [dead, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert outcomes(result) == ["connection", "ok"]
    assert result.attempts[0].elapsed_ms < 200


async def test_no_response_at_all_times_out_and_fails_over(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=hang~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    started = time.perf_counter()
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert outcomes(result) == ["timeout", "ok"]
    assert 0.5 <= time.perf_counter() - started < 1.5  # the 0.5 s attempt timeout


HEDGED = replace(FAST, ttft_timeout_s=0.3, attempt_timeout_s=5.0)


async def test_a_hung_non_streaming_primary_is_hedged_after_its_time_to_first_content(
    simulator_url, store
):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=hang~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b~tokens=7", provider="sim-b")
    started = time.perf_counter()
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=HEDGED, store=store
    )
    elapsed = time.perf_counter() - started
    # the backup started at 0.3 s (the TTFT deadline) beside the primary, not after its 5 s
    assert 0.3 <= elapsed < 1.0
    assert result.candidate is backup and result.value.usage.completion_tokens == 7
    assert outcomes(result) == ["timeout", "ok"]  # the primary, cancelled, counts as too slow
    assert store.view(primary.deployment_id).consecutive_failures == 1
    assert store.view(primary.deployment_id).in_flight == 0


async def test_a_slow_primary_that_answers_first_wins_over_its_hedge(simulator_url, store):
    primary = candidate(simulator_url, 1, "gpt-a~ttft_ms=700~tokens=3")
    backup = candidate(simulator_url, 2, "gpt-b~ttft_ms=3000", provider="sim-b")
    started = time.perf_counter()
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=HEDGED, store=store
    )
    assert 0.7 <= time.perf_counter() - started < 1.5  # not the hedge's 3 s
    assert result.candidate is primary
    # the hedge started at 0.3 s and lost: cancelled, no mark against its deployment
    assert outcomes(result) == ["hedge_cancelled", "ok"]
    backup_stats = store.view(backup.deployment_id)
    assert backup_stats is None or backup_stats.consecutive_failures == 0
    assert backup_stats is None or backup_stats.in_flight == 0


async def test_a_hedge_is_not_started_for_streams_or_without_a_fallback(simulator_url, store):
    only = candidate(simulator_url, 1, "gpt-a~ttft_ms=700~tokens=3")
    result = await run_with_failover([only], complete_attempt(chat()), config=HEDGED, store=store)
    assert outcomes(result) == ["ok"]  # nothing to hedge with: the slow answer is waited for
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=500~times=1~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    failed = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=HEDGED, store=store
    )
    assert outcomes(failed) == ["server_error", "ok"]  # a quick failure fails over as before


async def test_when_both_hedged_attempts_fail_the_loop_goes_on(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=hang~id={fid}a")
    hedge = candidate(simulator_url, 2, f"gpt-b~fault=hang~id={fid}b", provider="sim-b")
    last = candidate(simulator_url, 3, "gpt-c~tokens=4", provider="sim-c")
    config = replace(HEDGED, attempt_timeout_s=1.0)
    started = time.perf_counter()
    result = await run_with_failover(
        [primary, hedge, last], complete_attempt(chat()), config=config, store=store
    )
    # the primary's 1 s ran out at 1.0 s, the hedge's (started at 0.3 s) at 1.3 s; then the next
    assert 1.3 <= time.perf_counter() - started < 2.0
    assert result.candidate is last
    assert outcomes(result) == ["timeout", "timeout", "ok"]
    assert [a.deployment_id for a in result.attempts] == [1, 2, 3]


async def test_slow_first_token_triggers_failover_before_any_byte(simulator_url, store):
    primary = candidate(simulator_url, 1, "gpt-a~ttft_ms=20000")
    backup = candidate(simulator_url, 2, "gpt-b~tokens=5", provider="sim-b")
    started = time.perf_counter()
    result = await run_with_failover(
        [primary, backup],
        stream_attempt(chat(stream=True)),
        streaming=True,
        config=FAST,
        store=store,
    )
    assert time.perf_counter() - started < 1.5
    assert outcomes(result) == ["timeout", "ok"]
    buffered, rest = result.value
    chunks = buffered + [chunk async for chunk in rest]
    assert text_of(chunks).count(" ") == 3  # 4 words and a full stop: 5 tokens
    result.finish(ok=True, output_tokens=5)
    assert store.view(2).latency_ms is not None


async def test_stream_cut_after_40_of_60_tokens_is_an_error_after_the_first_byte(
    simulator_url, store
):
    fid = fault_id()
    only = candidate(simulator_url, 1, f"gpt-a~tokens=60~fault=cut~after=40~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    result = await run_with_failover(
        [only, backup], stream_attempt(chat(stream=True)), streaming=True, config=FAST, store=store
    )
    assert outcomes(result) == ["ok"]  # the first byte came: no failover after it
    buffered, rest = result.value
    received = list(buffered)
    with pytest.raises(ProviderError) as caught:
        async for chunk in rest:
            received.append(chunk)
    assert caught.value.kind is ErrorKind.CONNECTION
    tokens = sum(1 for chunk in received for ch in chunk.choices if ch.delta.content)
    assert tokens == 40
    result.finish(ok=False, error_kind=caught.value.kind.value)
    stats = store.view(1)
    assert stats.consecutive_failures == 1
    assert stats.in_flight == 0


async def test_stream_stall_before_the_first_token_fails_over(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=stall~after=0~stall_ms=30000~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    started = time.perf_counter()
    result = await run_with_failover(
        [primary, backup],
        stream_attempt(chat(stream=True)),
        streaming=True,
        config=FAST,
        store=store,
    )
    assert time.perf_counter() - started < 1.5
    assert outcomes(result) == ["timeout", "ok"]


async def test_stream_stall_after_tokens_is_a_mid_stream_timeout(simulator_url, store):
    fid = fault_id()
    only = candidate(
        simulator_url, 1, f"gpt-a~tokens=20~fault=stall~after=5~stall_ms=30000~id={fid}"
    )
    result = await run_with_failover(
        [only], stream_attempt(chat(stream=True)), streaming=True, config=FAST, store=store
    )
    buffered, rest = result.value
    received = list(buffered)
    started = time.perf_counter()
    with pytest.raises(ProviderError) as caught:
        async for chunk in rest:
            received.append(chunk)
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert 0.4 <= time.perf_counter() - started < 1.2  # the 0.4 s stall timeout
    assert sum(1 for chunk in received for ch in chunk.choices if ch.delta.content) == 5


async def test_malformed_sse_chunk_before_content_fails_over(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=malformed~after=0~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    result = await run_with_failover(
        [primary, backup],
        stream_attempt(chat(stream=True)),
        streaming=True,
        config=FAST,
        store=store,
    )
    assert outcomes(result) == ["protocol", "ok"]


async def test_missing_done_is_reported_at_the_end_not_a_silent_success(simulator_url, store):
    fid = fault_id()
    only = candidate(simulator_url, 1, f"gpt-a~tokens=6~fault=no_done~id={fid}")
    result = await run_with_failover(
        [only], stream_attempt(chat(stream=True)), streaming=True, config=FAST, store=store
    )
    buffered, rest = result.value
    received = list(buffered)
    with pytest.raises(ProviderError) as caught:
        async for chunk in rest:
            received.append(chunk)
    assert caught.value.kind is ErrorKind.PROTOCOL
    assert sum(1 for chunk in received for ch in chunk.choices if ch.delta.content) == 6


async def test_context_length_exceeded_moves_to_a_larger_context_model(simulator_url, store):
    small = candidate(simulator_url, 1, "small~ctx=4", context_window=4)
    same_model = candidate(
        simulator_url, 2, "small~ctx=4", provider="sim-b", model_id="sim-a/small", context_window=4
    )
    large = candidate(simulator_url, 3, "large", provider="sim-c", context_window=200_000)
    result = await run_with_failover(
        [small, same_model, large], complete_attempt(chat()), config=FAST, store=store
    )
    assert outcomes(result) == ["context_length", "skipped_context", "ok"]
    assert result.candidate is large
    assert store.view(1) is None or store.view(1).consecutive_failures == 0  # not its fault


async def test_context_length_with_no_larger_model_exhausts(simulator_url, store):
    small = candidate(simulator_url, 1, "small~ctx=4", context_window=4)
    with pytest.raises(FailoverExhausted) as caught:
        await run_with_failover([small], complete_attempt(chat()), config=FAST, store=store)
    assert caught.value.kind == "context_length"
    assert caught.value.last.status == 400


async def test_content_filter_refusal_is_an_answer_not_a_failure(simulator_url, store):
    """OpenAI-style providers answer a filtered prompt with finish_reason content_filter."""
    primary = candidate(simulator_url, 1, "gpt-a~fault=filter")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert outcomes(result) == ["ok"]
    assert result.value.choices[0].finish_reason == "content_filter"


async def test_content_filter_error_is_not_retried(simulator_url, store):
    """Azure rejects a filtered prompt with a 400 content_filter error: no other deployment
    is tried (the same prompt would be refused again)."""
    azure = candidate(simulator_url, 1, "gpt-a~fault=filter", provider="azure-sim")
    azure = replace(
        azure,
        endpoint=replace(
            azure.endpoint,
            kind="azure",
            base_url=f"{simulator_url}/azure",
            api_version="2024-10-21",
        ),
    )
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    with pytest.raises(FailoverExhausted) as caught:
        await run_with_failover([azure, backup], complete_attempt(chat()), config=FAST, store=store)
    assert outcomes(caught.value) == ["content_filter"]
    assert caught.value.stopped is True
    assert caught.value.kind == "content_filter"
    assert store.view(1) is None or store.view(1).consecutive_failures == 0


async def test_bad_request_is_not_retried(simulator_url, store):
    primary = candidate(simulator_url, 1, "gpt-a~fault=400")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    with pytest.raises(FailoverExhausted) as caught:
        await run_with_failover(
            [primary, backup], complete_attempt(chat()), config=FAST, store=store
        )
    assert outcomes(caught.value) == ["bad_request"]
    assert caught.value.stopped is True


async def test_attempts_are_bounded(simulator_url, store):
    fid = fault_id()
    cands = [
        candidate(simulator_url, i, f"m{i}~fault=502~retry_after=9~id={fid}{i}", provider=f"p{i}")
        for i in range(1, 7)
    ]
    config = FailoverConfig(max_attempts=3, max_total_s=5, ttft_timeout_s=0.5)
    with pytest.raises(FailoverExhausted) as caught:
        await run_with_failover(cands, complete_attempt(chat()), config=config, store=store)
    assert outcomes(caught.value) == ["server_error"] * 3


async def test_total_time_is_bounded(simulator_url, store):
    fid = fault_id()
    cands = [
        candidate(simulator_url, i, f"m{i}~fault=hang~id={fid}{i}", provider=f"p{i}")
        for i in range(1, 4)
    ]
    config = FailoverConfig(
        max_attempts=4, max_total_s=0.6, ttft_timeout_s=5.0, attempt_timeout_s=5
    )
    started = time.perf_counter()
    with pytest.raises(FailoverExhausted) as caught:
        await run_with_failover(cands, complete_attempt(chat()), config=config, store=store)
    assert time.perf_counter() - started < 1.2
    # half of what is left while a fallback remains: 0.3 s, 0.15 s, then the last one's 0.15 s
    assert outcomes(caught.value) == ["timeout"] * 3


async def test_flapping_primary_breaker_opens_moves_traffic_and_recovers(simulator_url, store):
    """503 for 1 s while requests keep coming: 3 failures open the breaker, traffic moves to
    the backup with no call to the primary, half-open trials fail while it is down, then a
    trial succeeds and traffic returns to the primary."""
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=503~for_s=1.0~retry_after=5~id={fid}")
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    answered_by: list[int] = []
    primary_failures = 0
    started = time.perf_counter()
    while time.perf_counter() - started < 2.0:
        result = await run_with_failover(
            [primary, backup], complete_attempt(chat()), config=FAST, store=store
        )
        answered_by.append(result.candidate.deployment_id)
        primary_failures += sum(
            1 for a in result.attempts if a.deployment_id == 1 and a.outcome == "overloaded"
        )
        await asyncio.sleep(0.02)
    assert len(answered_by) > 40
    # every request succeeded; the first three went through the primary's 503 to the backup
    assert answered_by[:3] == [2, 2, 2]
    # while it was down, the primary was called only for trials: about one per 0.3 s cool-down
    assert 4 <= primary_failures <= 3 + 1.0 / 0.3 + 1
    assert answered_by[-1] == 1  # recovered: traffic is back on the primary
    assert store.view(1).state == 0


async def test_fallback_accounting_names_who_answered_with_its_usage(simulator_url, store):
    fid = fault_id()
    primary = candidate(simulator_url, 1, f"gpt-a~fault=502~retry_after=9~id={fid}")
    fallback = candidate(simulator_url, 2, "claude-ish~tokens=11", provider="sim-b")
    result = await run_with_failover(
        [primary, fallback], complete_attempt(chat("Two words")), config=FAST, store=store
    )
    assert result.candidate.model_id == "sim-b/claude-ish"
    assert result.candidate.deployment == "dep-2"
    assert result.failovers == 1
    assert [a.public()["model"] for a in result.attempts] == ["sim-a/gpt-a", "sim-b/claude-ish"]
    assert result.value.usage.prompt_tokens == 5
    assert result.value.usage.completion_tokens == 11


async def test_transient_failures_alone_are_retried_with_growing_jittered_back_off(
    simulator_url, store
):
    fid = fault_id()
    only = candidate(simulator_url, 1, f"gpt-a~fault=500~times=2~id={fid}")
    config = replace(FAST, backoff_s=0.2)
    result = await run_with_failover([only], complete_attempt(chat()), config=config, store=store)
    assert outcomes(result) == ["server_error", "server_error", "ok"]
    first, second = (a.waited_ms for a in result.attempts[:2])
    assert 100 <= first <= 200  # half of 0.2 s, plus up to the other half
    assert 200 <= second <= 400  # doubled
    with pytest.raises(FailoverExhausted) as caught:  # at most `retries` calls again
        await run_with_failover(
            [candidate(simulator_url, 1, f"gpt-a~fault=500~id={fault_id()}")],
            complete_attempt(chat()),
            config=replace(FAST, backoff_s=0.01),
            store=store,
        )
    assert outcomes(caught.value) == ["server_error"] * 3


@pytest.mark.parametrize("header, seconds", [("retry_after_ms=200", 0.2), ("retry_after=1.5", 1.5)])
async def test_retry_after_is_honoured_when_nothing_else_is_left(
    simulator_url, store, header, seconds
):
    """Short or up to retry_after_max_s (2 s in FAST): the same deployment, after the wait."""
    only = candidate(simulator_url, 1, f"gpt-a~fault=429~{header}~times=1~id={fault_id()}")
    started = time.perf_counter()
    result = await run_with_failover([only], complete_attempt(chat()), config=FAST, store=store)
    assert seconds <= time.perf_counter() - started < seconds + 0.8
    assert outcomes(result) == ["rate_limited", "ok"]
    assert result.attempts[0].waited_ms == seconds * 1000
    assert result.candidate is only
    # beyond the request's remaining time: not waited for
    with pytest.raises(FailoverExhausted) as caught:
        await run_with_failover(
            [candidate(simulator_url, 1, f"gpt-a~fault=429~retry_after=1.5~id={fault_id()}")],
            complete_attempt(chat()),
            config=replace(FAST, max_total_s=1.0),
            store=store,
        )
    assert outcomes(caught.value) == ["rate_limited"]


async def test_a_deployments_own_timeouts_replace_the_settings(simulator_url, store):
    primary = replace(
        candidate(simulator_url, 1, f"gpt-a~fault=hang~id={fault_id()}"),
        timeouts={"attempt_s": 0.2},
    )
    backup = candidate(simulator_url, 2, "gpt-b", provider="sim-b")
    started = time.perf_counter()
    result = await run_with_failover(
        [primary, backup], complete_attempt(chat()), config=FAST, store=store
    )
    assert outcomes(result) == ["timeout", "ok"]
    assert 0.2 <= result.attempts[0].elapsed_ms / 1000 < 0.45  # not the 0.5 s of the config
    assert time.perf_counter() - started < 1.0


async def test_a_fallback_that_rejects_a_prefill_moves_to_another_model(simulator_url, store):
    """failoverbench S14: the primary is down, the first fallback model refuses the assistant
    prefill (a 400 about the model, not the request): the next model answers, and the refusal
    does not count against the refusing deployment's health."""
    prefilled = ChatRequest(
        messages=[
            Message(role="user", content="Name a colour."),
            Message(role="assistant", content="The colour is"),
        ]
    )
    down = candidate(simulator_url, 1, f"gpt-a~fault=503~retry_after=3~id={fault_id()}")
    strict = candidate(simulator_url, 2, "claude-x~fault=no_prefill", provider="sim-b")
    strict_elsewhere = candidate(
        simulator_url, 3, "claude-x~fault=no_prefill", provider="sim-c", model_id="sim-b/claude-x"
    )
    lenient = candidate(simulator_url, 4, "gpt-c", provider="sim-d")
    result = await run_with_failover(
        [down, strict, strict_elsewhere, lenient],
        complete_attempt(prefilled),
        config=FAST,
        store=store,
    )
    assert outcomes(result) == ["overloaded", "unsupported", "skipped_unsupported", "ok"]
    assert result.candidate is lenient
    assert result.attempts[1].status == 400
    assert store.view(2) is None or store.view(2).consecutive_failures == 0
    # without a prefill the strict model answers
    result = await run_with_failover([strict], complete_attempt(chat()), config=FAST, store=store)
    assert outcomes(result) == ["ok"]
