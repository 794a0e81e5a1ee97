"""The stream checkpoints (``gateway.pipeline._Checkpoints``) in isolation: before each chunk
goes out the hold's checkpoint covers what was relayed (up to the hold), and a stream that has
covered its whole hold writes no more (found by ``make bench``: an answer whose characters / 4
count passed its hold awaited a Redis write before every remaining chunk, and 100 paced
streams stalled)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from gateway import pipeline


class Stream(SimpleNamespace):
    """The CallContext fields the checkpoints read."""

    def generated_tokens(self) -> int:
        return self.generated_chars // 4


@pytest.fixture
def writes(monkeypatch):
    done: list[int] = []

    async def progress(reservation, *, output_tokens, **terms):
        await asyncio.sleep(0)  # a round trip
        done.append(output_tokens)
        return True

    monkeypatch.setattr(pipeline, "admission_progress", progress)
    return done


def relay(reserve: int, chunks: int, chars_per_chunk: int) -> list[tuple[int, int]]:
    """Relay ``chunks`` content chunks; returns (relayed tokens, covered) before each."""
    ctx = Stream(
        admission=object(),
        output_tokens_reserve=reserve,
        content_chunks=0,
        generated_chars=0,
        chosen=None,
    )
    checkpoints = pipeline._Checkpoints(ctx)
    seen = []

    async def go() -> None:
        for _ in range(chunks):
            ctx.content_chunks += 1
            ctx.generated_chars += chars_per_chunk
            await checkpoints.cover()
            seen.append((pipeline._relayed_tokens(ctx), checkpoints.covered))
        await asyncio.gather(*pipeline._IN_FLIGHT)

    asyncio.run(go())
    return seen


def test_every_chunk_is_covered_before_it_goes_out(writes):
    seen = relay(reserve=4096, chunks=400, chars_per_chunk=7)
    assert all(covered >= relayed for relayed, covered in seen), seen[:5]
    assert len(writes) < 40  # renewed ahead, not per chunk


def test_a_stream_past_its_hold_by_characters_writes_no_more(writes):
    # 64 chunks of 7 characters: 112 tokens by characters / 4 against a 64-token hold
    seen = relay(reserve=64, chunks=64, chars_per_chunk=7)
    assert all(covered >= min(relayed, 64) for relayed, covered in seen)
    assert max(writes) == 64
    assert len(writes) <= 3
