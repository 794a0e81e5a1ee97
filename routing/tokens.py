"""Token counts before a provider counts: the one estimate of a prompt's size (routing, cost
figures), the one upper bound (what admission holds) and the one default output ceiling. The
gateway counts characters, bytes, images and messages of a request
(``gateway.pipeline.prompt_counts``); the complexity features count the text they read; both
turn the counts into tokens here.

The bound: every tokenizer the providers use (byte-level BPE at OpenAI, Anthropic, xAI,
DeepSeek, Mistral, Qwen; SentencePiece with byte fallback at Gemini) makes each token of at
least one UTF-8 byte, so a text's tokens are at most its bytes. To the bytes the bound adds
each provider family's framing (role and turn markers per message, the reply primer), the
instructions a provider adds when tools are given (Anthropic documents 346 tokens), and the
most an image may cost within the provider's documented limits. Providers count tool
definitions in their own rendering of the schema, which is no longer than its JSON."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CHARS_PER_TOKEN = 4  # English text averages about four characters a token
MESSAGE_OVERHEAD = 4  # role and framing tokens per message
REQUEST_OVERHEAD = 3  # the reply primer
# Prompt tokens an image costs at most: OpenAI's tiling of a 2048 x 768 high-detail image
# (85 + 170 x 6); "low" detail is a flat 85.
IMAGE_TOKENS = 1105
IMAGE_TOKENS_LOW = 85
# Output tokens assumed when neither the request (max_tokens) nor the model (max output)
# says how long the answer may be: the worst case of the max_cost_per_request_usd cap.
DEFAULT_OUTPUT_TOKENS = 1024


# The bound's allowances per provider family (deployment kind): framing per message and per
# request, the tool-use instructions, and the most one image costs (OpenAI: 85 + 170 x 6 tiles
# at high detail; Anthropic and Bedrock: about 1.15 megapixels / 750 for the largest image it
# keeps; Gemini: media resolution "high", 1,120).
BOUND_MESSAGE = 16
BOUND_REQUEST = 32
BOUND_TOOLS = 600
BOUND_IMAGE = {"openai": 1105, "azure": 1105, "anthropic": 1600, "bedrock": 1600, "gemini": 1120}
BOUND_IMAGE_LOW = {"openai": 85, "azure": 85}


@dataclass(frozen=True, slots=True)
class PromptCounts:
    """What a prompt is made of, counted without keeping any of it."""

    chars: int = 0  # characters of text: messages, tool calls and definitions, schemas
    utf8_bytes: int = 0  # the same text's UTF-8 bytes
    tools: int = 0
    messages: int = 0
    images: int = 0  # high or auto detail
    images_low: int = 0
    token_ids: int = 0  # inputs given as token ids (embeddings)
    framed: bool = True  # chat framing (per-message and reply overhead); False: embeddings


def tokens_for_chars(chars: int) -> int:
    """Characters / 4, rounded up."""
    return -(-max(chars, 0) // CHARS_PER_TOKEN)


def prompt_tokens_estimate(counts: PromptCounts) -> int:
    """The prompt's size in tokens as providers are likely to count it."""
    tokens = tokens_for_chars(counts.chars) + counts.token_ids
    tokens += counts.images * IMAGE_TOKENS + counts.images_low * IMAGE_TOKENS_LOW
    if counts.framed:
        tokens += REQUEST_OVERHEAD + MESSAGE_OVERHEAD * counts.messages
    return tokens


def prompt_tokens_bound(counts: PromptCounts, kinds: Iterable[str]) -> int:
    """At least as many tokens as any of the providers ``kinds`` (deployment kinds) counts
    for the prompt (see the module docstring)."""
    kinds = set(kinds) or {"openai"}
    image = max(BOUND_IMAGE.get(k, max(BOUND_IMAGE.values())) for k in kinds)
    image_low = max(BOUND_IMAGE_LOW.get(k, image) for k in kinds)
    tokens = counts.utf8_bytes + counts.token_ids
    tokens += counts.images * image + counts.images_low * image_low
    if counts.framed:
        tokens += BOUND_REQUEST + BOUND_MESSAGE * counts.messages
        tokens += BOUND_TOOLS if counts.tools else 0
    return tokens
