"""The admission estimates the gateway reserves with: prompt size from the request (lengths
only) and the output ceiling."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from gateway.admission import input_tokens_estimate, output_tokens_reserve
from gateway.providers.types import (
    ChatRequest,
    ContentPart,
    EmbeddingRequest,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
)
from routing.catalog import catalog_snapshot_reset
from tests.gateway import factories as f


def test_input_estimate_counts_text_tools_schema_and_images():
    request = ChatRequest(
        messages=[
            Message(role="system", content="x" * 40),  # 10
            Message(
                role="user",
                content=[
                    ContentPart(type="text", text="y" * 8),  # 2
                    ContentPart(type="image", image_url="data:image/png;base64,AAAA"),
                    ContentPart(type="image", image_url="https://e/x.png", detail="low"),
                ],
            ),
            Message(
                role="assistant",
                content=None,
                tool_calls=[ToolCall(id="c1", name="get", arguments='{"q":"z"}')],  # 3 + 9
            ),
        ],
        tools=[Tool(name="get", description="abcd", parameters={"type": "object"})],
        response_format=ResponseFormat(type="json_schema", schema={"a": 1}),
    )
    # characters: 40 + 8 + 12 + (3 + 4 + 17) + 7 = 91 -> 23 tokens; 3 messages x 4 + 3;
    # images 1105 + 85.
    assert input_tokens_estimate(request) == 23 + 15 + 1105 + 85


def test_input_estimate_for_embeddings():
    assert input_tokens_estimate(EmbeddingRequest(input=["abcde", "fgh"])) == 2
    assert input_tokens_estimate(EmbeddingRequest(input=[[1, 2, 3], [4]])) == 4


@pytest.mark.django_db(transaction=True)
def test_output_reserve_max_tokens_times_n_else_declared_max_capped(settings):
    settings.MEGAROUTER_RESERVE_OUTPUT_TOKENS = 2000
    provider = f.provider_create("openai", "openai", "http://127.0.0.1:9/openai/v1")
    small = f.model_create(provider, "small-out", max_output_tokens=500)
    large = f.model_create(provider, "large-out", max_output_tokens=64000)
    silent = f.model_create(provider, "no-declared-max")
    catalog_snapshot_reset()

    def reserve(route="chat", max_tokens=None, n=1, *models):
        ctx = SimpleNamespace(route=route, max_tokens=max_tokens, n=n)
        plan = SimpleNamespace(candidates=[SimpleNamespace(model_id=m) for m in models])
        return asyncio.run(output_tokens_reserve(ctx, plan))

    assert reserve("chat", 100, 3, small.canonical_id) == 300
    assert reserve("chat", None, 1, small.canonical_id) == 500
    assert reserve("chat", None, 2, small.canonical_id, large.canonical_id) == 4000  # capped
    assert reserve("chat", None, 1, silent.canonical_id) == 2000
    assert reserve("embeddings", None, 1, small.canonical_id) == 0
    catalog_snapshot_reset()
