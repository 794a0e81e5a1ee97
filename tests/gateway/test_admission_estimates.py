"""The admission estimates the gateway reserves with: prompt size from the request (lengths
only, gateway.pipeline.prompt_counts -> routing.tokens) and the output ceiling (billing)."""

from __future__ import annotations

from billing.admission.service import UNDECLARED_MAX_OUTPUT, output_tokens_wanted
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
from gateway.simulator.engine import count_tokens
from routing.tokens import prompt_tokens_bound, prompt_tokens_estimate


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


def test_output_wanted_is_max_tokens_times_n_else_the_largest_declared_max(settings):
    settings.MEGAROUTER_MAX_OUTPUT_TOKENS = 0  # the default: the model's own maximum

    def wanted(route="chat", max_tokens=None, n=1, *declared):
        return output_tokens_wanted(
            max_tokens=max_tokens, n=n, model_max_outputs=declared, embeddings=route == "embeddings"
        )

    small, large, silent = 500, 64000, None  # the candidates' declared max outputs
    assert wanted("chat", 100, 3, small) == 300
    assert wanted("chat", None, 1, small) == 500
    assert wanted("chat", None, 2, small, large) == 128000
    assert wanted("chat", None, 1, silent) == UNDECLARED_MAX_OUTPUT
    assert wanted("embeddings", None, 1, small) == 0
    settings.MEGAROUTER_MAX_OUTPUT_TOKENS = 2000  # an operator's cap
    assert wanted("chat", None, 2, small, large) == 4000
    assert wanted("chat", 3000, 1, large) == 3000  # the caller's own limit is not capped


def _bound(request, kinds=("openai",)):
    return prompt_tokens_bound(prompt_counts(request), kinds)


def test_input_bound_is_above_what_the_simulator_counts_where_chars_over_4_is_not():
    # 40,000 "!" are 40,000 tokens to the simulator (one per punctuation mark): the estimate
    # (characters / 4) says 10,000, the bound (UTF-8 bytes plus framing) is above the count.
    text = "!" * 40_000
    request = ChatRequest(messages=[Message(role="user", content=text)])
    counted = count_tokens(text) + 3  # the simulator's rule: text tokens + 3 per message
    assert input_tokens_estimate(request) < counted
    assert _bound(request) >= counted
    for kinds in (("anthropic",), ("gemini",), ("bedrock", "azure")):
        assert _bound(request, kinds) >= counted


def test_input_bound_counts_multibyte_text_tools_and_images_per_provider():
    cjk = "\u8def\u7531" * 100  # 200 characters, 600 UTF-8 bytes
    request = ChatRequest(
        messages=[
            Message(
                role="user",
                content=[
                    ContentPart(type="text", text=cjk),
                    ContentPart(type="image", image_url="data:image/png;base64,AAAA"),
                ],
            ),
        ],
        tools=[Tool(name="get", description="d", parameters={"type": "object"})],
    )
    tools_json = len('{"type": "object"}') + len("get") + len("d")
    openai = _bound(request, ("openai",))
    anthropic = _bound(request, ("anthropic",))
    assert openai >= 600 + tools_json + 1105
    assert anthropic > openai  # Anthropic's largest image costs more than OpenAI's
    assert _bound(request, ("openai", "anthropic")) == anthropic  # the worst of the set
