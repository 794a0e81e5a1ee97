"""The model catalog: providers, models, versioned prices, deployments and credentials.

Writes go through ``routing.services`` (each bumps the catalog version so every process
rebuilds its in-process snapshot, see ``routing.catalog``); reads on the hot path go through
the snapshot, never through these models directly.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

PRICE_FIELD: dict[str, Any] = {"max_digits": 20, "decimal_places": 12}


class ProviderKind(models.TextChoices):
    """The wire protocol a provider speaks (what adapter the gateway uses)."""

    OPENAI = "openai", "OpenAI-compatible"
    ANTHROPIC = "anthropic", "Anthropic Messages"
    GEMINI = "gemini", "Google Gemini"
    AZURE = "azure", "Azure OpenAI"
    BEDROCK = "bedrock", "AWS Bedrock (Converse)"


class AuthStyle(models.TextChoices):
    BEARER = "bearer", "Authorization: Bearer <key>"
    X_API_KEY = "x-api-key", "x-api-key header (Anthropic)"
    API_KEY_HEADER = "api-key", "api-key header (Azure)"
    GOOG_API_KEY = "x-goog-api-key", "x-goog-api-key header (Gemini)"
    AWS_SIGV4 = "aws-sigv4", "AWS Signature V4"
    NONE = "none", "No authentication"


class Provider(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=16, choices=ProviderKind.choices)
    base_url = models.CharField(
        max_length=500, blank=True, help_text="Blank when every deployment sets its own."
    )
    auth_style = models.CharField(max_length=16, choices=AuthStyle.choices)
    zero_data_retention = models.BooleanField(
        default=False, help_text="The provider contractually retains no prompts or completions."
    )
    regions = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class ModelMode(models.TextChoices):
    CHAT = "chat", "Chat"
    EMBEDDING = "embedding", "Embedding"
    COMPLETION = "completion", "Completion (legacy)"


class ModelStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DEPRECATED = "deprecated", "Deprecated"


class QualityTier(models.IntegerChoices):
    """How capable a model is, for the router. Derived from price and family on import
    (see docs/catalog.md); operators override it in the operator file."""

    ECONOMY = 1, "Economy"
    STANDARD = 2, "Standard"
    STRONG = 3, "Strong"
    FRONTIER = 4, "Frontier"


# The failover loop's per-attempt deadlines, overriding the ROUTING_* settings
# (docs/failover.md, "Deadlines"); routing.operator_config validates them.
TIMEOUT_KEYS = ("ttft_s", "stall_s", "attempt_s")
TIMEOUTS_HELP = "Seconds: ttft_s, stall_s, attempt_s (each optional)."


class Model(models.Model):
    canonical_id = models.CharField(
        max_length=255, unique=True, help_text="provider slug / provider model name"
    )
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    provider_model_name = models.CharField(max_length=255)
    display_name = models.CharField(max_length=255)
    family = models.CharField(max_length=120, blank=True)
    mode = models.CharField(max_length=16, choices=ModelMode.choices, default=ModelMode.CHAT)
    context_window = models.PositiveIntegerField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Embedding models: the longest vector the model returns (the most `dimensions` may ask)
    output_vector_size = models.PositiveIntegerField(null=True, blank=True)
    supports_tools = models.BooleanField(default=False)
    supports_vision = models.BooleanField(default=False)
    supports_json_schema = models.BooleanField(default=False)
    supports_reasoning = models.BooleanField(default=False)
    supports_streaming = models.BooleanField(default=True)
    supports_prompt_caching = models.BooleanField(default=False)
    quality_tier = models.PositiveSmallIntegerField(
        choices=QualityTier.choices, default=QualityTier.STANDARD
    )
    status = models.CharField(
        max_length=16, choices=ModelStatus.choices, default=ModelStatus.ACTIVE
    )
    deprecation_date = models.DateField(null=True, blank=True)
    # The day the provider released the model, when the catalog source says (docs/catalog.md,
    # "Release dates"); /v1/models reports it as `created`.
    released_on = models.DateField(null=True, blank=True)
    timeouts = models.JSONField(default=dict, blank=True, help_text=TIMEOUTS_HELP)
    source = models.CharField(
        max_length=64, blank=True, help_text="Where it came from: litellm, openrouter, operator."
    )
    source_key = models.CharField(max_length=255, blank=True)
    # Field names an operator set in the operator file; catalog_import leaves them alone.
    # "price" locks the price too.
    operator_overrides = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["canonical_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_model_name"], name="routing_model_provider_name"
            )
        ]
        indexes = [models.Index(fields=["provider_model_name"])]

    def __str__(self) -> str:
        return self.canonical_id

    @property
    def current_price(self) -> ModelPrice | None:
        """The price version in force now (one query; the hot path uses the snapshot)."""
        from django.utils import timezone

        return (
            self.prices.filter(effective_from__lte=timezone.now())
            .order_by("-effective_from")
            .first()
        )


class ModelPrice(models.Model):
    """One price version, in US dollars per token. Never edited after it is written: a price
    change is a new row with a later ``effective_from``. Usage is charged at the version in
    force when it happened (``routing.selectors.price_at``)."""

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="prices")
    effective_from = models.DateTimeField()
    input_per_token = models.DecimalField(**PRICE_FIELD)
    output_per_token = models.DecimalField(**PRICE_FIELD)
    cached_input_per_token = models.DecimalField(**PRICE_FIELD, null=True, blank=True)
    cache_write_per_token = models.DecimalField(**PRICE_FIELD, null=True, blank=True)
    # Only where the provider bills reasoning tokens apart from output tokens.
    reasoning_per_token = models.DecimalField(**PRICE_FIELD, null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    source = models.CharField(max_length=120, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_id", "effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"], name="routing_modelprice_model_effective"
            )
        ]
        get_latest_by = "effective_from"

    def __str__(self) -> str:
        return f"{self.model_id} from {self.effective_from:%Y-%m-%d %H:%M}"

    def save(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if not self._state.adding:
            raise ValidationError("Price versions are immutable; add a new version instead.")
        super().save(*args, **kwargs)


class CredentialKind(models.TextChoices):
    API_KEY = "api_key", "API key"
    AWS = "aws", "AWS access key"


class Credential(models.Model):
    """A provider secret, encrypted at rest (Fernet, keys from MEGAROUTER_ENCRYPTION_KEYS).
    The plaintext is never rendered by any page or API after it is saved."""

    name = models.SlugField(max_length=120, unique=True)
    kind = models.CharField(max_length=16, choices=CredentialKind.choices)
    provider = models.ForeignKey(
        Provider, on_delete=models.SET_NULL, null=True, blank=True, related_name="credentials"
    )
    ciphertext = models.TextField(editable=False)
    # Where apply_config read the secret from (env var names), for the operator's reference.
    source = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    secret_updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """A model served at one provider endpoint (and region) with one credential."""

    name = models.SlugField(max_length=160, unique=True)
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="deployments")
    base_url = models.CharField(
        max_length=500, blank=True, help_text="Blank: the provider's base URL."
    )
    provider_model_name = models.CharField(
        max_length=255, blank=True, help_text="Blank: the model's name (Azure: deployment name)."
    )
    api_version = models.CharField(max_length=40, blank=True, help_text="Azure OpenAI only.")
    region = models.CharField(max_length=64, blank=True)
    credential = models.ForeignKey(
        Credential, on_delete=models.PROTECT, null=True, blank=True, related_name="deployments"
    )
    weight = models.PositiveIntegerField(default=1)
    priority = models.IntegerField(default=0, help_text="Lower is tried first.")
    headers = models.JSONField(
        default=dict, blank=True, help_text="Extra, non-secret HTTP headers sent upstream."
    )
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    timeouts = models.JSONField(
        default=dict, blank=True, help_text=TIMEOUTS_HELP + " Wins over the model's."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_id", "priority", "name"]

    def __str__(self) -> str:
        return self.name


class CatalogVersion(models.Model):
    """One row: bumped by every catalog write. Processes compare ``token`` with their
    snapshot's (through the cache, at most once a second) and rebuild when it changed."""

    version = models.BigIntegerField(default=0)
    token = models.CharField(max_length=32, default="initial")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"catalog v{self.version}"


# Routing policies (routing engine): defined beside the catalog, registered with this app.
from routing.policy_models import RoutingPolicy, RoutingPolicyVersion  # noqa: E402, F401
