"""Format-specific request fields reach only the providers whose API has them: OpenAI-format
pass-through fields (presence_penalty, metadata, service_tier, ...) go to OpenAI-compatible
bodies as they are and never into Anthropic's, Gemini's or Bedrock's (which refuse unknown
fields), except where those APIs have the same setting under their own name; Anthropic's
top_k goes to Anthropic, Gemini (topK) and Bedrock (Claude's additional fields), never to
OpenAI. A request routed by auto across providers is therefore never refused for a field its
new provider does not know."""

from __future__ import annotations

from gateway.providers import anthropic, bedrock, gemini, openai
from gateway.providers.types import ChatRequest, Message

OPENAI_EXTRAS = {
    "presence_penalty": 0.5,
    "frequency_penalty": 0.25,
    "metadata": {"feature": "search"},
    "service_tier": "auto",
}


def _request(**fields):
    return ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=16, **fields)


def test_openai_format_fields_reach_openai_bodies_and_no_other_as_they_are():
    request = _request(extra=dict(OPENAI_EXTRAS))
    openai_body = openai.request_to_wire(request, model="gpt-4o", stream=False)
    assert {k: openai_body[k] for k in OPENAI_EXTRAS} == OPENAI_EXTRAS
    anthropic_body = anthropic.request_to_wire(request, "claude-sonnet-4", stream=False)
    gemini_body = gemini.request_to_wire(request)
    bedrock_body = bedrock.request_to_wire(request)
    for body in (anthropic_body, gemini_body, bedrock_body):
        assert not set(OPENAI_EXTRAS) & set(body), body
    # Gemini has the two penalties, under its own names
    config = gemini_body["generationConfig"]
    assert (config["presencePenalty"], config["frequencyPenalty"]) == (0.5, 0.25)
    assert "additionalModelRequestFields" not in bedrock_body


def test_anthropic_top_k_reaches_the_apis_that_have_it_and_not_openai():
    request = _request(top_k=40)
    assert anthropic.request_to_wire(request, "claude-sonnet-4", stream=False)["top_k"] == 40
    assert gemini.request_to_wire(request)["generationConfig"]["topK"] == 40
    assert bedrock.request_to_wire(request)["additionalModelRequestFields"] == {"top_k": 40}
    assert "top_k" not in openai.request_to_wire(request, model="gpt-4o", stream=False)


def test_the_anthropic_wire_parses_top_k_into_its_own_field():
    from gateway.wire.anthropic import parse_messages

    inbound = parse_messages(
        {
            "model": "anthropic/claude-sonnet-4",
            "max_tokens": 16,
            "top_k": 5,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    assert inbound.chat.top_k == 5
    assert "top_k" not in inbound.chat.extra
