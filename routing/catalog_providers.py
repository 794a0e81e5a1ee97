"""The providers MegaRouter knows out of the box, and how LiteLLM catalog keys map onto them.

``catalog_import`` creates a known provider the first time one of its models is imported (never
overwriting an operator's later changes to it); entries of LiteLLM providers not listed here are
skipped and counted. Zero-data-retention is off for every provider by default: it depends on the
operator's agreement with the provider, so the operator file turns it on.
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.models import AuthStyle, ProviderKind


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    slug: str
    name: str
    kind: str
    base_url: str
    auth_style: str
    litellm_keys: tuple[str, ...]
    # LiteLLM keys for this provider look like "<prefix>/<model>"; the prefix is dropped to get
    # the provider's model name. ``bare_keys`` accepts keys without a prefix too (openai's
    # "gpt-5", anthropic's "claude-opus-4-5"); otherwise such keys are pricing buckets or
    # aliases ("fireworks-ai-default") and are skipped.
    key_prefixes: tuple[str, ...] = ()
    bare_keys: bool = False
    regions: tuple[str, ...] = ()


_OPENAI = ProviderKind.OPENAI
_BEARER = AuthStyle.BEARER

KNOWN_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        "openai",
        "OpenAI",
        _OPENAI,
        "https://api.openai.com/v1",
        _BEARER,
        ("openai", "text-completion-openai"),
        ("openai/",),
        bare_keys=True,
    ),
    ProviderSpec(
        "anthropic",
        "Anthropic",
        ProviderKind.ANTHROPIC,
        "https://api.anthropic.com",
        AuthStyle.X_API_KEY,
        ("anthropic",),
        ("anthropic/",),
        bare_keys=True,
    ),
    ProviderSpec(
        "gemini",
        "Google Gemini",
        ProviderKind.GEMINI,
        "https://generativelanguage.googleapis.com",
        AuthStyle.GOOG_API_KEY,
        ("gemini",),
        ("gemini/",),
    ),
    ProviderSpec(
        "deepseek",
        "DeepSeek",
        _OPENAI,
        "https://api.deepseek.com/v1",
        _BEARER,
        ("deepseek",),
        ("deepseek/",),
        bare_keys=True,
    ),
    ProviderSpec("xai", "xAI", _OPENAI, "https://api.x.ai/v1", _BEARER, ("xai",), ("xai/",)),
    ProviderSpec(
        "dashscope",
        "Alibaba Cloud Model Studio (Qwen)",
        _OPENAI,
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        _BEARER,
        ("dashscope",),
        ("dashscope/",),
    ),
    ProviderSpec(
        "moonshot",
        "Moonshot AI (Kimi)",
        _OPENAI,
        "https://api.moonshot.ai/v1",
        _BEARER,
        ("moonshot",),
        ("moonshot/",),
    ),
    ProviderSpec(
        "mistral",
        "Mistral AI",
        _OPENAI,
        "https://api.mistral.ai/v1",
        _BEARER,
        ("mistral",),
        ("mistral/",),
    ),
    ProviderSpec(
        "groq", "Groq", _OPENAI, "https://api.groq.com/openai/v1", _BEARER, ("groq",), ("groq/",)
    ),
    ProviderSpec(
        "together_ai",
        "Together AI",
        _OPENAI,
        "https://api.together.xyz/v1",
        _BEARER,
        ("together_ai",),
        ("together_ai/",),
    ),
    ProviderSpec(
        "fireworks_ai",
        "Fireworks AI",
        _OPENAI,
        "https://api.fireworks.ai/inference/v1",
        _BEARER,
        ("fireworks_ai",),
        ("fireworks_ai/",),
    ),
    ProviderSpec(
        "openrouter",
        "OpenRouter",
        _OPENAI,
        "https://openrouter.ai/api/v1",
        _BEARER,
        ("openrouter",),
        ("openrouter/",),
    ),
    ProviderSpec(
        "deepinfra",
        "DeepInfra",
        _OPENAI,
        "https://api.deepinfra.com/v1/openai",
        _BEARER,
        ("deepinfra",),
        ("deepinfra/",),
    ),
    ProviderSpec(
        "perplexity",
        "Perplexity",
        _OPENAI,
        "https://api.perplexity.ai",
        _BEARER,
        ("perplexity",),
        ("perplexity/",),
    ),
    ProviderSpec(
        "cerebras",
        "Cerebras",
        _OPENAI,
        "https://api.cerebras.ai/v1",
        _BEARER,
        ("cerebras",),
        ("cerebras/",),
    ),
    ProviderSpec(
        "zai", "Z.ai (GLM)", _OPENAI, "https://api.z.ai/api/paas/v4", _BEARER, ("zai",), ("zai/",)
    ),
    ProviderSpec(
        "azure",
        "Azure OpenAI",
        ProviderKind.AZURE,
        "",
        AuthStyle.API_KEY_HEADER,
        ("azure",),
        ("azure/",),
    ),
    ProviderSpec(
        "bedrock",
        "AWS Bedrock",
        ProviderKind.BEDROCK,
        "https://bedrock-runtime.us-east-1.amazonaws.com",
        AuthStyle.AWS_SIGV4,
        ("bedrock", "bedrock_converse"),
        (),
        bare_keys=True,
        regions=("us-east-1", "us-west-2", "eu-central-1", "eu-west-1", "ap-northeast-1"),
    ),
)

# Providers that make their own models (the rest host other makers' models). A bare model name
# found at several providers resolves to the one origin provider among them, if exactly one:
# "gpt-5" is openai/gpt-5, not azure/gpt-5.
ORIGIN_PROVIDERS = frozenset(
    {"openai", "anthropic", "gemini", "deepseek", "xai", "dashscope", "moonshot", "mistral", "zai"}
)

# Who makes each model family (routing.catalog_import.model_family): a bare name found at
# several providers resolves to the maker's copy first ("deepseek-v4-pro" is
# deepseek/deepseek-v4-pro, not dashscope/deepseek-v4-pro).
FAMILY_MAKERS = {
    "claude": "anthropic",
    "gemini": "gemini",
    "gemma": "gemini",
    "deepseek": "deepseek",
    "grok": "xai",
    "qwen": "dashscope",
    "kimi": "moonshot",
    "mistral": "mistral",
    "glm": "zai",
    "o-series": "openai",
}

PROVIDERS_BY_SLUG: dict[str, ProviderSpec] = {spec.slug: spec for spec in KNOWN_PROVIDERS}
PROVIDERS_BY_LITELLM_KEY: dict[str, ProviderSpec] = {
    key: spec for spec in KNOWN_PROVIDERS for key in spec.litellm_keys
}


def provider_model_name_for(spec: ProviderSpec, key: str) -> str | None:
    """The provider's own model name for a LiteLLM key, or None when the key is not a callable
    model of this provider (pricing buckets, fine-tune templates, region-priced variants)."""
    if key.startswith("ft:"):
        return None  # fine-tuning price templates, not models
    for prefix in spec.key_prefixes:
        if key.startswith(prefix):
            name = key[len(prefix) :]
            break
    else:
        if not spec.bare_keys:
            return None
        name = key
    if not name or name.startswith("ft:"):
        return None
    if spec.kind in (ProviderKind.AZURE, ProviderKind.BEDROCK) and "/" in name:
        # Region- or commitment-specific price variants ("azure/eu/gpt-4o",
        # "bedrock/us-east-1/..."): the base entry carries the model.
        return None
    return name
