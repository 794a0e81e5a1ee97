"""The hot-path view of the catalog: an immutable in-process snapshot.

``catalog_snapshot()`` returns the current ``CatalogSnapshot``; it checks the catalog version at
most once a second (through the cache, and the database when the cache is not shared between
processes or has no value) and rebuilds, in a constant number of queries, only when the
version changed. ``await acatalog_snapshot()`` is the same for async views: when the snapshot is
fresh it returns without touching the database or a thread.

Everything in a snapshot is frozen: dataclasses, tuples and read-only mappings. Credentials are
held encrypted and decrypted on first use (``snapshot.credential_secret(id)``).
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from django.conf import settings
from django.utils import timezone

from megarouter import refresh, shared_cache
from routing.catalog_providers import FAMILY_MAKERS, ORIGIN_PROVIDERS
from routing.crypto import CredentialSecret, decrypt_secret
from routing.models import Credential, Deployment, Model, ModelPrice, Provider
from routing.selectors import catalog_version_token
from routing.services import CATALOG_VERSION_CACHE_KEY

CHECK_INTERVAL = 1.0  # seconds between version checks


class UnknownModel(LookupError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown model {name!r}")


class AmbiguousModel(LookupError):
    def __init__(self, name: str, candidates: tuple[str, ...]) -> None:
        self.name = name
        self.candidates = candidates
        super().__init__(f"model name {name!r} is ambiguous: use one of {', '.join(candidates)}")


@dataclass(frozen=True, slots=True)
class PriceVersion:
    id: int
    effective_from: datetime
    input_per_token: Decimal
    output_per_token: Decimal
    cached_input_per_token: Decimal | None
    cache_write_per_token: Decimal | None
    reasoning_per_token: Decimal | None


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: int
    slug: str
    name: str
    kind: str
    base_url: str
    auth_style: str
    zero_data_retention: bool
    regions: tuple[str, ...]
    enabled: bool


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    canonical_id: str
    provider: str  # provider slug
    provider_model_name: str
    display_name: str
    family: str
    mode: str
    context_window: int | None
    max_output_tokens: int | None
    supports_tools: bool
    supports_vision: bool
    supports_json_schema: bool
    supports_reasoning: bool
    supports_streaming: bool
    supports_prompt_caching: bool
    quality_tier: int
    status: str
    prices: tuple[PriceVersion, ...] = field(repr=False)  # ascending effective_from
    deprecation_date: date | None = None
    output_vector_size: int | None = None  # embedding models: the most `dimensions` may ask
    # ``created`` of /v1/models (Unix seconds): the release day at 00:00 UTC when the catalog
    # knows it, else when the model entered this catalog (docs/catalog.md, "Release dates")
    created: int = 0
    price_starts: tuple[datetime, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "price_starts", tuple(p.effective_from for p in self.prices))

    def price_at(self, when: datetime) -> PriceVersion | None:
        index = bisect.bisect_right(self.price_starts, when)
        return self.prices[index - 1] if index else None

    @property
    def current_price(self) -> PriceVersion | None:
        return self.price_at(timezone.now())

    def deprecated_on(self, day: date) -> bool:
        """Deprecated by the catalog, or past its deprecation date on ``day`` (an import marks
        the status; the date takes effect by itself between imports)."""
        return self.status == "deprecated" or (
            self.deprecation_date is not None and self.deprecation_date <= day
        )


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """Field names follow gateway.providers.types.Endpoint where they mean the same."""

    id: int
    name: str
    model: str  # canonical model id
    provider: str  # provider slug
    kind: str  # wire protocol: openai | anthropic | gemini | azure | bedrock
    base_url: str
    provider_model_name: str  # what goes upstream (Azure: the deployment name)
    api_version: str | None
    region: str | None
    credential_id: int | None
    auth_style: str
    weight: int
    priority: int
    rpm_limit: int | None
    tpm_limit: int | None
    zero_data_retention: bool
    headers: tuple[tuple[str, str], ...]
    # per-attempt deadlines overriding the settings: the model's, then the deployment's
    timeouts: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CatalogSnapshot:
    token: str
    version: int
    built_at: float  # time.monotonic()
    providers: Mapping[str, ProviderInfo]
    models: Mapping[str, ModelInfo]  # canonical id -> model
    aliases: Mapping[str, str]  # unambiguous bare provider model name -> canonical id
    ambiguous: Mapping[str, tuple[str, ...]]  # bare name -> the canonical ids it could mean
    deployments: Mapping[str, tuple[DeploymentInfo, ...]]  # canonical id -> enabled ones
    deployments_by_id: Mapping[int, DeploymentInfo]
    _ciphertexts: Mapping[int, str] = field(repr=False)
    _secrets: dict[int, CredentialSecret] = field(default_factory=dict, repr=False)

    def resolve(self, name: str) -> ModelInfo:
        """A canonical id or a bare provider model name (``gpt-5`` -> ``openai/gpt-5``).
        Raises UnknownModel, or AmbiguousModel naming the candidates."""
        model = self.models.get(name)
        if model is not None:
            return model
        canonical = self.aliases.get(name)
        if canonical is not None:
            return self.models[canonical]
        candidates = self.ambiguous.get(name)
        if candidates:
            raise AmbiguousModel(name, candidates)
        raise UnknownModel(name)

    def price_at(self, model_id: str, when: datetime) -> PriceVersion | None:
        return self.resolve(model_id).price_at(when)

    def current_price(self, model_id: str) -> PriceVersion | None:
        return self.resolve(model_id).current_price

    def deployments_for(self, model_id: str) -> tuple[DeploymentInfo, ...]:
        return self.deployments.get(self.resolve(model_id).canonical_id, ())

    def credential_secret(self, credential_id: int) -> CredentialSecret:
        """The decrypted secret (cached in this process for the snapshot's lifetime)."""
        secret = self._secrets.get(credential_id)
        if secret is None:
            secret = decrypt_secret(self._ciphertexts[credential_id])
            self._secrets[credential_id] = secret
        return secret


def catalog_snapshot_build() -> CatalogSnapshot:
    """Build a snapshot from the database: six queries, whatever the catalog's size.

    1. the version token (the snapshot is rebuilt when it changes);
    2. providers; 3. price versions; 4. models, and the bare names that resolve to them;
    5. enabled deployments of enabled providers; 6. credential ciphertexts (decrypted lazily).
    """
    version, token = catalog_version_token()
    providers = _providers()
    models = _models({p.id: p for p in providers.values()}, _prices())
    aliases, ambiguous = _bare_names(models)
    deployments, by_id = _deployments()
    ciphertexts = dict(Credential.objects.values_list("id", "ciphertext"))
    return CatalogSnapshot(
        token=token,
        version=version,
        built_at=time.monotonic(),
        providers=MappingProxyType(providers),
        models=MappingProxyType(models),
        aliases=MappingProxyType(aliases),
        ambiguous=MappingProxyType(ambiguous),
        deployments=MappingProxyType({k: tuple(v) for k, v in deployments.items()}),
        deployments_by_id=MappingProxyType(by_id),
        _ciphertexts=MappingProxyType(ciphertexts),
    )


def _providers() -> dict[str, ProviderInfo]:
    return {
        p.slug: ProviderInfo(
            id=p.pk,
            slug=p.slug,
            name=p.name,
            kind=p.kind,
            base_url=p.base_url,
            auth_style=p.auth_style,
            zero_data_retention=p.zero_data_retention,
            regions=tuple(p.regions or ()),
            enabled=p.enabled,
        )
        for p in Provider.objects.all()
    }


def _prices() -> dict[int, list[PriceVersion]]:
    prices: dict[int, list[PriceVersion]] = defaultdict(list)
    for row in ModelPrice.objects.order_by("model_id", "effective_from").values_list(
        "model_id",
        "id",
        "effective_from",
        "input_per_token",
        "output_per_token",
        "cached_input_per_token",
        "cache_write_per_token",
        "reasoning_per_token",
    ):
        prices[row[0]].append(PriceVersion(*row[1:]))
    return prices


_MODEL_FIELDS = (
    "id",
    "canonical_id",
    "provider_id",
    "provider_model_name",
    "display_name",
    "family",
    "mode",
    "context_window",
    "max_output_tokens",
    "output_vector_size",
    "supports_tools",
    "supports_vision",
    "supports_json_schema",
    "supports_reasoning",
    "supports_streaming",
    "supports_prompt_caching",
    "quality_tier",
    "status",
    "deprecation_date",
    "released_on",
    "created_at",
)


def _models(
    provider_by_id: dict[int, ProviderInfo], prices: dict[int, list[PriceVersion]]
) -> dict[str, ModelInfo]:
    models: dict[str, ModelInfo] = {}
    for m in Model.objects.order_by("canonical_id").values(*_MODEL_FIELDS):
        fields: dict[str, Any] = dict(m)
        provider = provider_by_id[fields.pop("provider_id")]
        released, added = fields.pop("released_on"), fields.pop("created_at")
        if released is not None:
            added = datetime(released.year, released.month, released.day, tzinfo=UTC)
        fields["created"] = int(added.timestamp())
        versions = tuple(prices.get(fields["id"], ()))
        model = ModelInfo(provider=provider.slug, prices=versions, **fields)
        models[model.canonical_id] = model
    return models


def _bare_names(models: dict[str, ModelInfo]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Bare provider model names: (aliases, ambiguous). A name at one provider is an alias;
    at several, the family's maker's copy, else the one first-party copy; else ambiguous."""
    by_bare_name: dict[str, list[str]] = defaultdict(list)
    for model in models.values():
        by_bare_name[model.provider_model_name].append(model.canonical_id)
    aliases = {}
    ambiguous = {}
    for bare, ids in by_bare_name.items():
        if bare in models:
            continue  # a canonical id wins over a bare name
        makers = [i for i in ids if models[i].provider == _maker(models[i].family)]
        origins = [i for i in ids if models[i].provider in ORIGIN_PROVIDERS]
        if len(ids) == 1:
            aliases[bare] = ids[0]
        elif len(makers) == 1:
            aliases[bare] = makers[0]
        elif len(origins) == 1:
            aliases[bare] = origins[0]
        else:
            ambiguous[bare] = tuple(sorted(ids))
    return aliases, ambiguous


def _deployments() -> tuple[dict[str, list[DeploymentInfo]], dict[int, DeploymentInfo]]:
    deployments: dict[str, list[DeploymentInfo]] = defaultdict(list)
    by_id: dict[int, DeploymentInfo] = {}
    for d in (
        Deployment.objects.filter(enabled=True, provider__enabled=True)
        .select_related("model", "provider")
        .order_by("priority", "name")
    ):
        info = DeploymentInfo(
            id=d.pk,
            name=d.name,
            model=d.model.canonical_id,
            provider=d.provider.slug,
            kind=d.provider.kind,
            base_url=(d.base_url or d.provider.base_url).rstrip("/"),
            provider_model_name=d.provider_model_name or d.model.provider_model_name,
            api_version=d.api_version or None,
            region=d.region or None,
            credential_id=d.credential_id,
            auth_style=d.provider.auth_style,
            weight=d.weight,
            priority=d.priority,
            rpm_limit=d.rpm_limit,
            tpm_limit=d.tpm_limit,
            zero_data_retention=d.provider.zero_data_retention,
            headers=tuple(sorted((str(k), str(v)) for k, v in (d.headers or {}).items())),
            timeouts=tuple(sorted({**(d.model.timeouts or {}), **(d.timeouts or {})}.items())),
        )
        deployments[info.model].append(info)
        by_id[info.id] = info
    return deployments, by_id


def _maker(family: str) -> str | None:
    if family.startswith("gpt-") and family != "gpt-oss":
        return "openai"
    return FAMILY_MAKERS.get(family)


def _cache_is_shared() -> bool:
    backend = settings.CACHES["default"]["BACKEND"]
    return not backend.endswith(("LocMemCache", "DummyCache"))


def catalog_snapshot(*, max_age: float = CHECK_INTERVAL) -> CatalogSnapshot:
    """The current snapshot; checks the version when the last check is older than
    ``max_age`` seconds (0 forces a check) and rebuilds if it changed."""
    return _holder.get(max_age)


def _version_changed(token: str) -> bool:
    cached = shared_cache.get(CATALOG_VERSION_CACHE_KEY) if _cache_is_shared() else None
    if cached is not None and cached == token:
        return False
    _, db_token = catalog_version_token()
    if _cache_is_shared() and cached != db_token:
        shared_cache.set(CATALOG_VERSION_CACHE_KEY, db_token, timeout=None)
    return db_token != token


_holder: refresh.Versioned[CatalogSnapshot] = refresh.Versioned(
    "catalog", catalog_snapshot_build, lambda snapshot: _version_changed(snapshot.token)
)


async def acatalog_snapshot(*, max_age: float = CHECK_INTERVAL) -> CatalogSnapshot:
    """``catalog_snapshot`` for async code: no thread hop and no I/O once a snapshot exists;
    after ``max_age`` the version check runs in the background (stale-while-revalidate), so a
    request never waits for it."""
    return await _holder.aget(max_age)


def catalog_snapshot_reset() -> None:
    """Forget the snapshot (tests; after restoring a database)."""
    _holder.reset()
