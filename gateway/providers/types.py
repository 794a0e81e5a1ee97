"""The gateway's internal, normalized request / response / stream-event model.

Inbound formats (OpenAI chat, legacy completions, Responses, Anthropic Messages) are parsed
into these types; adapters translate them to and from each provider's wire format. The shapes
follow OpenAI Chat Completions, the lingua franca, with provider-neutral names where they
differ. Nothing here holds I/O or Django state, so the types are cheap to build on the hot path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


# ---------------------------------------------------------------- request


@dataclass(slots=True)
class ContentPart:
    """One part of a message: ``text``, ``image`` (a URL or a ``data:`` URI), or an assistant
    turn's reasoning: ``thinking`` (its text and the provider's ``signature``, which Anthropic
    checks when the block is passed back) or ``redacted_thinking`` (encrypted ``data``). The
    reasoning parts keep their place among the text parts; :meth:`Message.text` skips them."""

    type: Literal["text", "image", "thinking", "redacted_thinking"]
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None  # "auto" | "low" | "high"
    # A prompt-cache breakpoint after this part (Anthropic's cache_control object, as sent)
    cache_control: dict[str, str] | None = None
    thinking: str | None = None  # type == "thinking": the reasoning text
    # type == "thinking": the provider's signature, passed back unmodified (None: the provider
    # gave none, as OpenAI-compatible reasoning_content has none)
    signature: str | None = None
    data: str | None = None  # type == "redacted_thinking": the encrypted reasoning

    @property
    def reasoning(self) -> bool:
        return self.type in ("thinking", "redacted_thinking")


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it
    cache_control: dict[str, str] | None = None  # a prompt-cache breakpoint after this call


@dataclass(slots=True)
class Message:
    role: Role
    # A plain string, or parts (text and images). None for an assistant turn that only calls tools.
    content: str | list[ContentPart] | None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None  # role == "tool": the call this answers
    # A prompt-cache breakpoint at the end of this message (system, tool result, or a
    # string-content turn; parts carry their own)
    cache_control: dict[str, str] | None = None
    refusal: str | None = None  # assistant output: the model's refusal text (OpenAI "refusal")

    def text(self) -> str:
        """The message's text, parts joined; images contribute nothing."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def thinking_text(self) -> str | None:
        """The reasoning text of this (assistant) turn's thinking parts, joined; None if it
        has none."""
        if not isinstance(self.content, list):
            return None
        texts = [part.thinking or "" for part in self.content if part.type == "thinking"]
        return "".join(texts) if texts else None


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema
    strict: bool | None = None
    cache_control: dict[str, str] | None = None  # a prompt-cache breakpoint after this tool


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(slots=True, frozen=True)
class ThinkingConfig:
    """Anthropic's extended thinking (``thinking``): enabled with a budget of reasoning tokens
    (at least 1024, under ``max_tokens``), or disabled."""

    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = None


@dataclass(slots=True)
class ChatRequest:
    messages: list[Message]
    model: str = ""  # the provider's own model name; set when a deployment is chosen
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    n: int = 1
    tools: list[Tool] | None = None
    # "auto" | "none" | "required" | {"name": "..."} (one named function)
    tool_choice: str | dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    reasoning_effort: str | None = None
    thinking: ThinkingConfig | None = None  # Anthropic extended thinking, as the caller sent
    top_k: int | None = None  # Anthropic's (and Gemini's topK, Bedrock Claude's top_k)
    # OpenAI-format fields passed through untouched (the OpenAI-compatible adapter's body
    # takes them as they are; adapters for other formats map the ones they have).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EmbeddingRequest:
    input: list[str] | list[list[int]]
    model: str = ""
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


# ---------------------------------------------------------------- response


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0  # all input tokens, cached ones included
    completion_tokens: int = 0  # all output tokens, reasoning ones included
    cached_tokens: int = 0  # input tokens read from the provider's prompt cache
    cache_write_tokens: int = 0  # input tokens written to the cache (Anthropic)
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Choice:
    index: int
    message: Message
    finish_reason: FinishReason | None
    logprobs: dict[str, Any] | None = None


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str  # the provider's model name that answered
    created: int
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None  # a fragment of the JSON text


@dataclass(slots=True)
class Delta:
    role: Role | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None
    # Reasoning, streamed before the answer: a fragment of a thinking block's text, the
    # block's signature (it closes the block), or a whole redacted_thinking block's data.
    thinking: str | None = None
    signature: str | None = None
    redacted_thinking: str | None = None


@dataclass(slots=True)
class ChunkChoice:
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


@dataclass(slots=True)
class ChatChunk:
    """One streamed event. A chunk with ``usage`` and no choices closes a stream that asked
    for usage; adapters always report usage on their last chunk when the provider gives it."""

    id: str
    model: str
    created: int
    choices: list[ChunkChoice]
    usage: Usage | None = None
    # More chunks from the same upstream read follow at once (the relay writes them together).
    more: bool = False


@dataclass(slots=True)
class Embedding:
    index: int
    vector: list[float]


@dataclass(slots=True)
class EmbeddingResponse:
    model: str
    data: list[Embedding]
    usage: Usage


# ---------------------------------------------------------------- errors


class ErrorKind(enum.StrEnum):
    """The taxonomy the router acts on."""

    RATE_LIMITED = "rate_limited"  # 429; honour retry_after
    OVERLOADED = "overloaded"  # 529 / 503 "overloaded"
    SERVER_ERROR = "server_error"  # other 5xx
    TIMEOUT = "timeout"  # connect, first byte, read or stream stall
    CONNECTION = "connection"  # refused, reset, DNS, TLS
    AUTHENTICATION = "authentication"  # 401 / 403 from the provider: our credential is bad
    BAD_REQUEST = "bad_request"  # 400 / 404 / 422: the request itself is wrong
    CONTEXT_LENGTH = "context_length"  # prompt + max output exceed the model's window
    # 400 naming something this model cannot take (an assistant prefill): another model may
    UNSUPPORTED = "unsupported"
    CONTENT_FILTER = "content_filter"  # refused by the provider's safety system
    PROTOCOL = "protocol"  # malformed response or stream from the provider


RETRIABLE = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.PROTOCOL,
        # Our credential at this deployment is bad; another deployment may be fine.
        ErrorKind.AUTHENTICATION,
    }
)


class ProviderError(Exception):
    """The one error type adapters raise. ``retriable`` says whether another deployment may
    succeed; CONTEXT_LENGTH is not retriable as-is but may move to a larger-context model, and
    UNSUPPORTED to another model."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        provider_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.provider_code = provider_code

    @property
    def retriable(self) -> bool:
        return self.kind in RETRIABLE

    def __repr__(self) -> str:
        return f"ProviderError({self.kind.value}, status={self.status}, {self.message!r})"


# ---------------------------------------------------------------- where a call goes


@dataclass(slots=True, frozen=True)
class Endpoint:
    """Everything an adapter needs to reach one deployment. Built from a routing Deployment
    and its decrypted Credential; never logged (``api_key`` and AWS secrets are secret)."""

    kind: Literal["openai", "anthropic", "gemini", "azure", "bedrock"]
    base_url: str
    model: str  # the provider's model name, or the Azure deployment name
    api_key: str = field(default="", repr=False)
    api_version: str | None = None  # Azure OpenAI
    region: str | None = None  # Bedrock
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    deployment_id: int | None = None
