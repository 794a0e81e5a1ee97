"""Token estimates before a provider counts: the one formula for a prompt's size and the one
default output ceiling. The gateway counts characters, images and messages of a request
(``gateway.pipeline.prompt_counts``); the complexity features count the text they read; both
turn the counts into tokens here."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class PromptCounts:
    """What a prompt is made of, counted without keeping any of it."""

    chars: int = 0  # characters of text: messages, tool calls and definitions, schemas
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
