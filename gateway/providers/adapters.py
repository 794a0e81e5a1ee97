"""The adapters by provider kind: one shared (stateless) instance each."""

from __future__ import annotations

from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.azure import AzureOpenAIAdapter
from gateway.providers.base import Adapter
from gateway.providers.bedrock import BedrockAdapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai import OpenAIAdapter
from gateway.providers.types import ErrorKind, ProviderError

ADAPTERS: dict[str, Adapter] = {
    cls.kind: cls()
    for cls in (OpenAIAdapter, AzureOpenAIAdapter, AnthropicAdapter, GeminiAdapter, BedrockAdapter)
}


def get_adapter(kind: str) -> Adapter:
    """The adapter for a provider kind ("openai", "azure", "anthropic", "gemini", "bedrock")."""
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise ProviderError(
            ErrorKind.BAD_REQUEST, f"no adapter for provider kind {kind!r}"
        ) from None
