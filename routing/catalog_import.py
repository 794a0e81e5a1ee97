"""Importing model catalogs: the LiteLLM ``model_prices_and_context_window.json`` format (the
bundled default, ``routing/data/``) and OpenRouter's ``/api/v1/models`` format.

Three steps, so a bad file changes nothing: ``catalog_load`` reads a path or URL,
``catalog_parse`` validates every entry it would import (raising ``CatalogFormatError`` naming
the key, field and line) and returns plain ``CatalogEntry`` values, and
``catalog_entries_import`` writes them in one transaction. Running it again on the same file
changes nothing.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from django.db import transaction
from django.utils import timezone

from routing.catalog_providers import (
    PROVIDERS_BY_LITELLM_KEY,
    PROVIDERS_BY_SLUG,
    ProviderSpec,
    provider_model_name_for,
)
from routing.models import Model, ModelMode, ModelPrice, ModelStatus, Provider, QualityTier
from routing.services import PriceInput, catalog_version_bump, catalog_write_lock

BUNDLED_CATALOG = Path(__file__).resolve().parent / "data" / "model_prices_and_context_window.json"
BUNDLED_SOURCE = "litellm 1.108.7"
IMPORTED_MODES = {m.value for m in ModelMode}
MAX_ERRORS = 20
PRICE_QUANTUM = Decimal("1e-12")


class CatalogFormatError(Exception):
    """The file is not a catalog we can import. ``errors`` lists each problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        shown = errors[:MAX_ERRORS]
        more = f"\n  ... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        super().__init__("catalog refused:\n  " + "\n  ".join(shown) + more)


@dataclass(slots=True)
class CatalogEntry:
    provider_slug: str
    provider_model_name: str
    source_key: str
    mode: str
    display_name: str
    family: str
    price: PriceInput
    context_window: int | None = None
    max_output_tokens: int | None = None
    output_vector_size: int | None = None
    supports_tools: bool = False
    supports_vision: bool = False
    supports_json_schema: bool = False
    supports_reasoning: bool = False
    supports_streaming: bool = True
    supports_prompt_caching: bool = False
    deprecation_date: date | None = None
    released_on: date | None = None

    @property
    def canonical_id(self) -> str:
        return f"{self.provider_slug}/{self.provider_model_name}"


@dataclass(slots=True)
class ParsedCatalog:
    format: str  # "litellm" | "openrouter"
    entries: list[CatalogEntry]
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class ImportResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    price_versions: int = 0

    def summary(self) -> str:
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"skipped {self.skipped}"
        )


# ---------------------------------------------------------------- load


def catalog_load(path_or_url: str | None = None) -> tuple[bytes, str]:
    """The raw bytes and a label for the source (the bundled file when None)."""
    if path_or_url is None:
        return BUNDLED_CATALOG.read_bytes(), BUNDLED_SOURCE
    if path_or_url.startswith(("http://", "https://")):
        try:
            response = httpx.get(path_or_url, timeout=30.0, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise CatalogFormatError([f"{path_or_url}: download failed: {exc}"]) from None
        return response.content, path_or_url
    path = Path(path_or_url)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise CatalogFormatError([f"{path}: {exc.strerror or exc}"]) from None


# ---------------------------------------------------------------- parse


def catalog_parse(raw: bytes, *, today: date | None = None) -> ParsedCatalog:
    """Validate and normalize a catalog file. Raises CatalogFormatError listing every problem."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise CatalogFormatError([f"line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    today = today or timezone.now().date()
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return _parse_openrouter(data["data"], text, today)
    if isinstance(data, dict):
        return _parse_litellm(data, text, today)
    raise CatalogFormatError(
        ['top level: expected an object (LiteLLM) or {"data": [...]} (OpenRouter)']
    )


def _line_of(text: str, key: str) -> int | None:
    position = text.find(json.dumps(key) + ":")
    if position < 0:
        return None
    return text.count("\n", 0, position) + 1


class _Where:
    """An entry's name in error messages, with its line number (found only when shown)."""

    __slots__ = ("key", "suffix", "text")

    def __init__(self, text: str, key: str, suffix: str = "") -> None:
        self.text = text
        self.key = key
        self.suffix = suffix

    def at(self, name: str) -> _Where:
        return _Where(self.text, self.key, f"{self.suffix}.{name}")

    def __str__(self) -> str:
        line = _line_of(self.text, self.key)
        where = f"{self.key!r} (line {line})" if line else repr(self.key)
        return where + self.suffix

    __format__ = lambda self, spec: str(self)  # noqa: E731


def _where(text: str, key: str) -> _Where:
    return _Where(text, key)


def _number(value: Any, path: object, errors: list[str], *, required: bool) -> Decimal | None:
    if value is None:
        if required:
            errors.append(f"{path}: is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        errors.append(f"{path}: expected a number, got {value!r}")
        return None
    number = Decimal(value)
    if not number.is_finite() or number < 0:
        errors.append(f"{path}: expected a number >= 0, got {value!r}")
        return None
    if number >= Decimal(10) ** 8:
        errors.append(f"{path}: {value!r} is too large for a price per token")
        return None
    return number.quantize(PRICE_QUANTUM)


def _int(value: Any, path: object, errors: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        errors.append(f"{path}: expected a whole number, got {value!r}")
        return None
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if not isinstance(value, int) or value < 0 or value > 2**31 - 1:
        errors.append(f"{path}: expected a whole number >= 0, got {value!r}")
        return None
    return value


def _flag(entry: dict[str, Any], name: str, path: object, errors: list[str]) -> bool:
    value = entry.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        errors.append(f"{path}.{name}: expected true or false, got {value!r}")
        return False
    return value


def _parse_litellm(data: dict[str, Any], text: str, today: date) -> ParsedCatalog:
    errors: list[str] = []
    skipped: Counter[str] = Counter()
    chosen: dict[str, tuple[CatalogEntry, bool]] = {}
    for key, entry in data.items():
        if key == "sample_spec":
            continue
        where = _where(text, key)
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected an object, got {type(entry).__name__}")
            continue
        provider_key = entry.get("litellm_provider")
        if provider_key is None and "mode" not in entry and "input_cost_per_token" not in entry:
            skipped["not a model entry"] += 1  # file metadata such as fallback rules
            continue
        if not isinstance(provider_key, str):
            errors.append(f"{where}.litellm_provider: expected a string, got {provider_key!r}")
            continue
        spec = PROVIDERS_BY_LITELLM_KEY.get(provider_key)
        if spec is None:
            skipped["provider not mapped"] += 1
            continue
        mode = entry.get("mode")
        if mode not in IMPORTED_MODES:
            skipped[f"mode {mode}"] += 1
            continue
        name = provider_model_name_for(spec, key)
        if name is None:
            skipped["not a callable model (pricing bucket, fine-tune or regional variant)"] += 1
            continue
        parsed = _litellm_entry(spec, name, key, entry, where, errors, today)
        if parsed is None:
            continue
        unpriced = parsed.price.input_per_token == 0 and parsed.price.output_per_token == 0
        if unpriced and mode != ModelMode.EMBEDDING:
            skipped["no price"] += 1
            continue
        prefixed = any(key.startswith(prefix) for prefix in spec.key_prefixes)
        previous = chosen.get(parsed.canonical_id)
        if previous is not None:
            skipped["duplicate of another key"] += 1
            if previous[1] or not prefixed:
                continue  # keep the first, unless this one carries the provider prefix
        chosen[parsed.canonical_id] = (parsed, prefixed)
    if errors:
        raise CatalogFormatError(errors)
    return ParsedCatalog("litellm", [entry for entry, _ in chosen.values()], skipped)


def _litellm_entry(
    spec: ProviderSpec,
    name: str,
    key: str,
    entry: dict[str, Any],
    where: _Where,
    errors: list[str],
    today: date,
) -> CatalogEntry | None:
    before = len(errors)
    price = PriceInput(
        input_per_token=_number(
            entry.get("input_cost_per_token", 0),
            where.at("input_cost_per_token"),
            errors,
            required=True,
        )
        or Decimal(0),
        output_per_token=_number(
            entry.get("output_cost_per_token", 0),
            where.at("output_cost_per_token"),
            errors,
            required=True,
        )
        or Decimal(0),
        cached_input_per_token=_number(
            entry.get("cache_read_input_token_cost"),
            where.at("cache_read_input_token_cost"),
            errors,
            required=False,
        ),
        cache_write_per_token=_number(
            entry.get("cache_creation_input_token_cost"),
            where.at("cache_creation_input_token_cost"),
            errors,
            required=False,
        ),
        reasoning_per_token=_number(
            entry.get("output_cost_per_reasoning_token"),
            where.at("output_cost_per_reasoning_token"),
            errors,
            required=False,
        ),
    )
    max_input = _int(entry.get("max_input_tokens"), where.at("max_input_tokens"), errors)
    max_output = _int(entry.get("max_output_tokens"), where.at("max_output_tokens"), errors)
    max_tokens = _int(entry.get("max_tokens"), where.at("max_tokens"), errors)
    vector = _int(entry.get("output_vector_size"), where.at("output_vector_size"), errors)
    deprecation = entry.get("deprecation_date")
    deprecation_date = None
    if deprecation is not None:
        try:
            deprecation_date = date.fromisoformat(str(deprecation))
        except ValueError:
            errors.append(f"{where}.deprecation_date: expected YYYY-MM-DD, got {deprecation!r}")
    flags = {
        "supports_tools": _flag(entry, "supports_function_calling", where, errors),
        "supports_vision": _flag(entry, "supports_vision", where, errors),
        "supports_json_schema": _flag(entry, "supports_response_schema", where, errors),
        "supports_reasoning": _flag(entry, "supports_reasoning", where, errors),
        "supports_prompt_caching": _flag(entry, "supports_prompt_caching", where, errors),
    }
    if len(errors) > before:
        return None
    mode = entry["mode"]
    if mode == ModelMode.EMBEDDING:
        max_output = None
    return CatalogEntry(
        provider_slug=spec.slug,
        provider_model_name=name,
        source_key=key,
        mode=mode,
        display_name=name.rsplit("/", 1)[-1],
        family=model_family(name),
        price=price,
        context_window=max_input or max_tokens,
        max_output_tokens=max_output if max_output is not None else max_tokens,
        output_vector_size=(vector or None) if mode == ModelMode.EMBEDDING else None,
        supports_streaming=mode != ModelMode.EMBEDDING,
        deprecation_date=deprecation_date,
        released_on=release_date_in_name(name),
        **flags,
    )


def _parse_openrouter(items: list[Any], text: str, today: date) -> ParsedCatalog:
    errors: list[str] = []
    skipped: Counter[str] = Counter()
    entries: dict[str, CatalogEntry] = {}
    for index, item in enumerate(items):
        entry = _openrouter_entry(item, f"data[{index}]", text, errors, skipped)
        if entry is not None:
            entries[entry.canonical_id] = entry
    if errors:
        raise CatalogFormatError(errors)
    return ParsedCatalog("openrouter", list(entries.values()), skipped)


def _openrouter_entry(
    item: Any, path: str, text: str, errors: list[str], skipped: Counter[str]
) -> CatalogEntry | None:
    """One model of OpenRouter's list, or None (its errors appended, or counted as skipped)."""
    if not isinstance(item, dict):
        errors.append(f"{path}: expected an object")
        return None
    model_id = item.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        errors.append(f"{path}.id: expected a model id string, got {model_id!r}")
        return None
    path = f"{path} ({model_id!r}, line {_id_line(text, model_id)})"
    pricing = item.get("pricing")
    architecture = item.get("architecture") or {}
    if not isinstance(pricing, dict) or not isinstance(architecture, dict):
        errors.append(f"{path}.{'pricing' if not isinstance(pricing, dict) else 'architecture'}"
                      ": expected an object")  # fmt: skip
        return None
    if str(pricing.get("prompt")) == "-1" or str(pricing.get("completion")) == "-1":
        skipped["variable price (router)"] += 1
        return None
    if "text" not in (architecture.get("output_modalities") or ["text"]):
        skipped["output is not text"] += 1
        return None
    before = len(errors)
    price = _openrouter_prices(pricing, path, errors)
    context = _int(item.get("context_length"), f"{path}.context_length", errors)
    top = item.get("top_provider") or {}
    max_output = _int(
        top.get("max_completion_tokens") if isinstance(top, dict) else None,
        f"{path}.top_provider.max_completion_tokens",
        errors,
    )
    params = item.get("supported_parameters") or []
    if not isinstance(params, list):
        errors.append(f"{path}.supported_parameters: expected a list")
    created = _int(item.get("created"), f"{path}.created", errors)
    if len(errors) > before:
        return None
    raw_name = item.get("name")
    inputs = architecture.get("input_modalities") or ["text"]
    return CatalogEntry(
        provider_slug="openrouter",
        provider_model_name=model_id,
        source_key=model_id,
        mode=ModelMode.CHAT,
        display_name=raw_name if isinstance(raw_name, str) else model_id,
        family=model_family(model_id),
        price=price,
        context_window=context,
        max_output_tokens=max_output,
        supports_tools="tools" in params,
        supports_vision="image" in inputs,
        supports_json_schema="structured_outputs" in params,
        supports_reasoning="reasoning" in params or "include_reasoning" in params,
        supports_prompt_caching=bool(price.cached_input_per_token),
        released_on=release_date_in_name(model_id)
        or (datetime.fromtimestamp(created, UTC).date() if created else None),
    )


def _openrouter_prices(pricing: dict[str, Any], path: str, errors: list[str]) -> PriceInput:
    def read(name: str, required: bool = False) -> Decimal | None:
        return _openrouter_price(pricing.get(name), f"{path}.pricing.{name}", errors, required)

    return PriceInput(
        input_per_token=read("prompt", True) or Decimal(0),
        output_per_token=read("completion", True) or Decimal(0),
        cached_input_per_token=read("input_cache_read") or None,
        cache_write_per_token=read("input_cache_write") or None,
        reasoning_per_token=read("internal_reasoning") or None,
    )


def _id_line(text: str, model_id: str) -> int | None:
    position = text.find(f'"id": {json.dumps(model_id)}')
    if position < 0:
        position = text.find(f'"id":{json.dumps(model_id)}')
    return text.count("\n", 0, position) + 1 if position >= 0 else None


def _openrouter_price(value: Any, path: str, errors: list[str], required: bool) -> Decimal | None:
    if isinstance(value, str):
        try:
            value = Decimal(value)
        except ArithmeticError:
            errors.append(f'{path}: expected a price string such as "0.000002", got {value!r}')
            return None
    return _number(value, path, errors, required=required)


# ---------------------------------------------------------------- derive

_FAMILIES = (
    ("gpt", r"^(chatgpt|gpt)[-.]?(\d+(\.\d+)?o?)?"),
    ("o-series", r"^o\d"),
    ("claude", r"^(anthropic\.)?claude"),
    ("gemini", r"^gemini"),
    ("gemma", r"^gemma"),
    ("deepseek", r"deepseek"),
    ("grok", r"^grok"),
    ("qwen", r"qwen|qwq"),
    ("kimi", r"kimi|moonshot"),
    ("mistral", r"mistral|mixtral|codestral|devstral|ministral|magistral|pixtral"),
    ("llama", r"llama"),
    ("glm", r"glm"),
    ("command", r"command"),
    ("nova", r"nova"),
    ("titan", r"titan"),
    ("jamba", r"jamba"),
    ("phi", r"phi-"),
    ("minimax", r"minimax"),
    ("gpt-oss", r"gpt-oss"),
)


def model_family(name: str) -> str:
    """A coarse family name ("claude", "gpt-5", "qwen") from a provider model name."""
    base = name.rsplit("/", 1)[-1].lower()
    if "gpt-oss" in base:
        return "gpt-oss"
    for family, pattern in _FAMILIES:
        match = re.search(pattern, base)
        if match:
            if family == "gpt" and match.group(2):
                return f"gpt-{match.group(2)}"
            return family
    return re.split(r"[-_.:@]", base, maxsplit=1)[0]


_MAKERS = r"(?:anthropic|meta|mistral|amazon|cohere|ai21|openai|deepseek|qwen|writer)\."
_MAKER_PREFIX = re.compile(rf"^(?:[a-z]{{2,6}}\.)?{_MAKERS}")  # Bedrock: [region.]maker.
BEDROCK_STYLE = re.compile(rf"^{_MAKERS}")  # a Bedrock model id without a region prefix
_VERSION_SUFFIX = re.compile(r"(?:-v\d+(?::\d+)?|@\d{8}|@default)$")
_DATE_SUFFIX = re.compile(r"-\d{8}$")


def same_model_key(name: str) -> str:
    """What two providers' names for one model have in common: the Bedrock id
    ``anthropic.claude-haiku-4-5-20251001-v1:0`` and Anthropic's ``claude-haiku-4-5`` (or its
    dated ``claude-haiku-4-5-20251001``) both give ``claude-haiku-4-5``; Azure names are
    OpenAI's. Lower case, without a region or maker prefix, a version suffix or a date."""
    key = name.rsplit("/", 1)[-1].lower()
    key = _MAKER_PREFIX.sub("", key)
    key = _VERSION_SUFFIX.sub("", key)
    return _DATE_SUFFIX.sub("", key)


_NAME_DATE = re.compile(r"[-@](20\d\d)-?(\d\d)-?(\d\d)(?:-v\d+(?::\d+)?)?$")


def release_date_in_name(name: str) -> date | None:
    """The date a provider stamps on a dated snapshot's name, its release date:
    ``gpt-4o-2024-08-06``, ``claude-haiku-4-5-20251001``, Bedrock's
    ``anthropic.claude-haiku-4-5-20251001-v1:0``, Vertex's ``claude-haiku-4-5@20251001``. None
    for an undated name (``gpt-5``) or one without the year (``gemini-2.5-flash-preview-05-20``)."""
    match = _NAME_DATE.search(name)
    if match is None:
        return None
    try:
        return date(*(int(part) for part in match.groups()))
    except ValueError:
        return None


_SMALL = {"mini", "nano", "lite", "flash", "haiku", "small", "tiny", "micro", "air", "instant"}
_SMALL_SIZE = re.compile(r"^\d+(\.\d+)?b$")  # "8b", "3b": parameter counts under 10B
_LARGE = {"opus", "pro", "large", "reasoner", "premier", "max", "ultra"}
MILLION = Decimal(1_000_000)


def derive_quality_tier(entry: CatalogEntry) -> int:
    """Default tier from list price and name (docs/catalog.md): the output price per million
    tokens sets the tier (>= $8 frontier, >= $2 strong, >= $0.5 standard, else economy); small
    variants (mini, nano, flash, haiku, ...) stay below frontier, large ones (opus, pro, max,
    reasoner) reach at least strong. Unpriced and embedding models are standard."""
    output_per_million = entry.price.output_per_token * MILLION
    if entry.mode != ModelMode.CHAT or output_per_million == 0:
        return QualityTier.STANDARD
    if output_per_million >= 8:
        tier = QualityTier.FRONTIER
    elif output_per_million >= 2:
        tier = QualityTier.STRONG
    elif output_per_million >= Decimal("0.5"):
        tier = QualityTier.STANDARD
    else:
        tier = QualityTier.ECONOMY
    tokens = set(re.split(r"[-_.:/@ ]", entry.provider_model_name.lower()))
    small = tokens & _SMALL or any(
        _SMALL_SIZE.match(token) and float(token[:-1]) < 10 for token in tokens
    )
    if small:
        tier = min(tier, QualityTier.STRONG)
    elif tokens & _LARGE:
        tier = max(tier, QualityTier.STRONG)
    return int(tier)


# ---------------------------------------------------------------- write

_IMPORTED_FIELDS = (
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
    "source_key",
)


def _entry_values(entry: CatalogEntry, today: date) -> dict[str, Any]:
    status = ModelStatus.ACTIVE
    if entry.deprecation_date is not None and entry.deprecation_date <= today:
        status = ModelStatus.DEPRECATED
    return {
        "display_name": entry.display_name[:255],
        "family": entry.family[:120],
        "mode": entry.mode,
        "context_window": entry.context_window,
        "max_output_tokens": entry.max_output_tokens,
        "output_vector_size": entry.output_vector_size,
        "supports_tools": entry.supports_tools,
        "supports_vision": entry.supports_vision,
        "supports_json_schema": entry.supports_json_schema,
        "supports_reasoning": entry.supports_reasoning,
        "supports_streaming": entry.supports_streaming,
        "supports_prompt_caching": entry.supports_prompt_caching,
        "quality_tier": derive_quality_tier(entry),
        "status": str(status),
        "deprecation_date": entry.deprecation_date,
        "released_on": entry.released_on,
        "source_key": entry.source_key[:255],
    }


def catalog_entries_import(
    *,
    parsed: ParsedCatalog,
    source: str,
    now: datetime | None = None,
) -> ImportResult:
    """Write parsed entries in one transaction: new models get a first price version; changed
    ones are updated (fields an operator overrode are left alone) and get a new price version
    when the price changed. A constant number of queries per batch, not per model.

    1. lock the catalog, create the providers it does not have yet;
    2. compare every entry with its model and latest price (``_plan``);
    3. write the new models, the changed ones and the new price versions in bulk; bump the
       catalog version when anything changed.
    """
    now = now or timezone.now()
    result = ImportResult(skipped=sum(parsed.skipped.values()))
    result.skipped_reasons = dict(parsed.skipped)
    slugs = sorted({entry.provider_slug for entry in parsed.entries})
    with transaction.atomic():
        catalog_write_lock()
        providers, added_providers = _providers_for(slugs)
        plan = _plan(parsed, providers, slugs, now, source, result)
        new_prices = plan.new_prices
        if plan.to_create:
            Model.objects.bulk_create([model for model, _ in plan.to_create], batch_size=500)
            created = {
                m.canonical_id: m
                for m in Model.objects.filter(
                    canonical_id__in=[model.canonical_id for model, _ in plan.to_create]
                ).only("pk", "canonical_id")
            }
            for model, entry in plan.to_create:
                new_prices.append(_price_row(created[model.canonical_id], entry.price, now, source))
            result.added = len(plan.to_create)
        if plan.to_update:
            fields = [*_IMPORTED_FIELDS, "updated_at"]
            Model.objects.bulk_update(plan.to_update, fields, batch_size=500)
        if new_prices:
            ModelPrice.objects.bulk_create(new_prices, batch_size=500)
        result.price_versions = len(new_prices)
        if plan.to_create or plan.to_update or new_prices or added_providers:
            catalog_version_bump()
    return result


def _providers_for(slugs: list[str]) -> tuple[dict[str, Provider], bool]:
    """The providers of ``slugs``, the missing ones created; and whether any was."""
    providers = {p.slug: p for p in Provider.objects.filter(slug__in=slugs)}
    missing = [_provider_from_spec(PROVIDERS_BY_SLUG[s]) for s in slugs if s not in providers]
    if missing:
        Provider.objects.bulk_create(missing)
        providers = {p.slug: p for p in Provider.objects.filter(slug__in=slugs)}
    return providers, bool(missing)


@dataclass
class _ImportPlan:
    to_create: list[tuple[Model, CatalogEntry]] = field(default_factory=list)
    to_update: list[Model] = field(default_factory=list)
    new_prices: list[ModelPrice] = field(default_factory=list)


def _plan(
    parsed: ParsedCatalog,
    providers: dict[str, Provider],
    slugs: list[str],
    now: datetime,
    source: str,
    result: ImportResult,
) -> _ImportPlan:
    """What each entry changes: a new model, new field values, a new price version."""
    existing = {
        m.canonical_id: m
        for m in Model.objects.filter(provider__slug__in=slugs).select_related("provider")
    }
    latest: dict[int, ModelPrice] = {}
    for price in ModelPrice.objects.filter(
        model__provider__slug__in=slugs, effective_from__lte=now
    ).order_by("model_id", "effective_from"):
        latest[price.model_id] = price
    plan = _ImportPlan()
    for entry in parsed.entries:
        values = _entry_values(entry, now.date())
        model = existing.get(entry.canonical_id)
        if model is None:
            model = Model(
                canonical_id=entry.canonical_id,
                provider=providers[entry.provider_slug],
                provider_model_name=entry.provider_model_name,
                source=parsed.format,
                **values,
            )
            plan.to_create.append((model, entry))
            continue
        locked = set(model.operator_overrides)
        changed = False
        for name, value in values.items():
            if name not in locked and getattr(model, name) != value:
                setattr(model, name, value)
                changed = True
        if changed:
            model.updated_at = now
            plan.to_update.append(model)
        if "price" not in locked and not entry.price.same_as(latest.get(model.pk)):
            plan.new_prices.append(_price_row(model, entry.price, now, source))
            changed = True
        if changed:
            result.updated += 1
        else:
            result.unchanged += 1
    return plan


def _price_row(model: Model, price: PriceInput, now: datetime, source: str) -> ModelPrice:
    return ModelPrice(
        model=model,
        effective_from=now,
        input_per_token=price.input_per_token,
        output_per_token=price.output_per_token,
        cached_input_per_token=price.cached_input_per_token,
        cache_write_per_token=price.cache_write_per_token,
        reasoning_per_token=price.reasoning_per_token,
        source=source[:120],
    )


def _provider_from_spec(spec: ProviderSpec) -> Provider:
    return Provider(
        slug=spec.slug,
        name=spec.name,
        kind=spec.kind,
        base_url=spec.base_url,
        auth_style=spec.auth_style,
        regions=list(spec.regions),
    )


def catalog_import(path_or_url: str | None = None) -> ImportResult:
    """Load, validate, then write (nothing is written when validation fails)."""
    raw, source = catalog_load(path_or_url)
    parsed = catalog_parse(raw)
    return catalog_entries_import(parsed=parsed, source=source)
