"""The admission estimates the gateway reserves with: prompt size from the request (lengths
only, gateway.pipeline.prompt_counts -> routing.tokens) and the output ceiling (billing)."""

from __future__ import annotations

from billing.admission.service import output_tokens_reserve
from gateway.pipeline import prompt_counts
from gateway.providers.types import (
    ChatRequest,
    ContentPart,
    EmbeddingRequest,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
)
from routing.tokens import prompt_tokens_estimate


def input_tokens_estimate(request):
    return prompt_tokens_estimate(prompt_counts(request))


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


def test_output_reserve_max_tokens_times_n_else_declared_max_capped(settings):
    settings.MEGAROUTER_RESERVE_OUTPUT_TOKENS = 2000

    def reserve(route="chat", max_tokens=None, n=1, *declared):
        return output_tokens_reserve(
            max_tokens=max_tokens, n=n, model_max_outputs=declared, embeddings=route == "embeddings"
        )

    small, large, silent = 500, 64000, None  # the candidates' declared max outputs
    assert reserve("chat", 100, 3, small) == 300
    assert reserve("chat", None, 1, small) == 500
    assert reserve("chat", None, 2, small, large) == 4000  # capped
    assert reserve("chat", None, 1, silent) == 2000
    assert reserve("embeddings", None, 1, small) == 0
