"""The operator file (``manage.py apply_config FILE``): providers, credentials, model overrides
and deployments declared in TOML (or YAML / JSON), applied idempotently.

Two phases, so a bad file changes nothing: every section is validated into plain plans first
(errors name the path of the bad field, e.g. ``deployments[2].weight``), then all plans are
applied in one transaction through the catalog services. Each section is a ``Section``
registered in ``SECTIONS``; a later section (``[[policies]]``, from the routing engine) is added
with ``register_section`` and runs after the catalog sections. See docs/configuration.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from routing.catalog_import import BEDROCK_STYLE, same_model_key
from routing.catalog_providers import PROVIDERS_BY_SLUG
from routing.crypto import CredentialSecret
from routing.models import (
    TIMEOUT_KEYS,
    AuthStyle,
    Credential,
    CredentialKind,
    Model,
    ModelMode,
    ModelStatus,
    Provider,
    ProviderKind,
    QualityTier,
)
from routing.services import (
    PriceInput,
    catalog_batch,
    credential_upsert,
    deployment_upsert,
    model_create,
    model_override,
    provider_upsert,
)

DEFAULT_AUTH = {
    ProviderKind.OPENAI: AuthStyle.BEARER,
    ProviderKind.ANTHROPIC: AuthStyle.X_API_KEY,
    ProviderKind.GEMINI: AuthStyle.GOOG_API_KEY,
    ProviderKind.AZURE: AuthStyle.API_KEY_HEADER,
    ProviderKind.BEDROCK: AuthStyle.AWS_SIGV4,
}
TIER_NAMES = {label.lower(): value for value, label in QualityTier.choices}
MAX_TIMEOUT_S = 3600
CAPABILITIES = ("tools", "vision", "json_schema", "reasoning", "streaming", "prompt_caching")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigFileError(Exception):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("operator file refused, nothing changed:\n  " + "\n  ".join(errors))


@dataclass
class Context:
    """What validation knows: the environment, the database's names, what the file adds."""

    environ: Mapping[str, str]
    errors: list[str] = field(default_factory=list)
    providers: dict[str, Provider] = field(default_factory=dict)  # in the database
    file_providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    credentials: set[str] = field(default_factory=set)
    models: dict[str, Model] = field(default_factory=dict)
    bare_names: dict[str, list[str]] = field(default_factory=dict)
    file_models: dict[str, str] = field(default_factory=dict)  # canonical id -> provider slug
    # What the file's [[models]] say about mode and status, so deployment sets see the
    # catalog as it will be after this run (and a second run finds nothing to do).
    file_model_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def provider_exists(self, slug: str) -> bool:
        return slug in self.providers or slug in self.file_providers


@dataclass(frozen=True)
class Section:
    name: str
    order: int
    validate: Callable[[list[dict[str, Any]], Context], list[Any]]
    apply: Callable[[list[Any], Context], None]
    doc: str = ""


SECTIONS: dict[str, Section] = {}


def register_section(section: Section) -> None:
    """Add a section kind (e.g. ``policies``): its validate runs with the others before any
    write, its apply runs in the same transaction, after sections of lower ``order``."""
    SECTIONS[section.name] = section


# ---------------------------------------------------------------- load


def config_load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError([f"{path}: {exc.strerror or exc}"]) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text, parse_float=Decimal)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text, parse_float=Decimal)
        else:
            raise ConfigFileError([f"{path}: use a .toml, .yaml, .yml or .json file"])
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError([f"{path}: {exc}"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigFileError(
            [f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    except Exception as exc:  # yaml.YAMLError
        if exc.__class__.__module__.startswith("yaml"):
            raise ConfigFileError([f"{path}: {exc}"]) from None
        raise
    if not isinstance(data, dict):
        raise ConfigFileError([f"{path}: the top level must be a table / mapping"])
    return data


def _interpolate(value: Any, path: str, ctx: Context) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = ctx.environ.get(name)
            if found:
                return found
            if default is not None:
                return default
            ctx.error(path, f"environment variable {name} is not set")
            return ""

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else k, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    return value


# ---------------------------------------------------------------- typed readers


class _Reader:
    """Reads one table of the file, recording errors under its path."""

    def __init__(self, data: Any, path: str, ctx: Context, allowed: set[str]) -> None:
        self.path = path
        self.ctx = ctx
        self.ok = True
        if not isinstance(data, dict):
            ctx.error(path, "expected a table")
            self.data: dict[str, Any] = {}
            self.ok = False
            return
        self.data = data
        for key in sorted(set(data) - allowed):
            self.fail(key, f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def fail(self, key: str, message: str) -> None:
        self.ctx.error(f"{self.path}.{key}", message)
        self.ok = False

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return default
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {value!r}")
            return default
        return value

    def slug(self, key: str, *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is not None and not re.fullmatch(r"[-a-zA-Z0-9_]+", value):
            self.fail(key, f"expected letters, digits, - and _ only, got {value!r}")
            return None
        return value

    def choice(self, key: str, choices: list[str], *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is not None and value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def flag(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {value!r}")
            return None
        return value

    def integer(self, key: str, *, min_value: int = 0, required: bool = False) -> int | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < min_value:
            self.fail(key, f"expected a whole number >= {min_value}, got {value!r}")
            return None
        return value

    def str_list(self, key: str) -> list[str] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of strings, got {value!r}")
            return None
        return value

    def day(self, key: str) -> date | None:
        """A TOML date (``2025-08-07``) or the same as an ISO string (YAML, JSON)."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        self.fail(key, f"expected a date (YYYY-MM-DD), got {value!r}")
        return None

    def table(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(key, f"expected a table, got {value!r}")
            return None
        return value

    def timeouts(self) -> dict[str, float] | None:
        """``timeouts = { ttft_s = 5, stall_s = 10, attempt_s = 60 }``: per-attempt deadlines
        in seconds (each optional, > 0 and at most an hour); ``{}`` clears them."""
        value = self.table("timeouts")
        if value is None:
            return None
        out: dict[str, float] = {}
        for key, seconds in value.items():
            path = f"{self.path}.timeouts.{key}"
            if key not in TIMEOUT_KEYS:
                self.ctx.error(path, f"unknown timeout (known: {', '.join(TIMEOUT_KEYS)})")
                self.ok = False
            elif (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float, Decimal))
                or not 0 < seconds <= MAX_TIMEOUT_S
            ):
                self.ctx.error(path, f"expected seconds in (0, {MAX_TIMEOUT_S}], got {seconds!r}")
                self.ok = False
            else:
                out[key] = float(seconds)
        return out


def _decimal(value: Any, path: str, ctx: Context) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        ctx.error(path, f'expected a decimal number (a string such as "0.0000025"), got {value!r}')
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        ctx.error(path, f"expected a decimal number, got {value!r}")
        return None
    if not number.is_finite() or number < 0:
        ctx.error(path, f"expected a number >= 0, got {value!r}")
        return None
    quantized = number.quantize(Decimal("1e-12"))
    if quantized != number:
        ctx.error(path, f"{value!r} has more than 12 decimal places")
        return None
    return quantized


def _items(data: dict[str, Any], name: str, ctx: Context) -> list[dict[str, Any]]:
    items = data.get(name, [])
    if not isinstance(items, list):
        ctx.error(name, f"expected a list of tables ([[{name}]]), got {type(items).__name__}")
        return []
    return items


# ---------------------------------------------------------------- providers


@dataclass
class ProviderPlan:
    slug: str
    fields: dict[str, Any]


def _validate_providers(items: list[dict[str, Any]], ctx: Context) -> list[ProviderPlan]:
    plans: list[ProviderPlan] = []
    allowed = {"slug", "name", "kind", "base_url", "auth_style", "zero_data_retention",
               "regions", "enabled"}  # fmt: skip
    for index, item in enumerate(items):
        r = _Reader(item, f"providers[{index}]", ctx, allowed)
        slug = r.slug("slug", required=True)
        fields: dict[str, Any] = {}
        for key in ("name", "base_url"):
            value = r.text(key)
            if value is not None:
                fields[key] = value
        kind = r.choice("kind", list(ProviderKind.values))
        if kind:
            fields["kind"] = kind
        auth = r.choice("auth_style", list(AuthStyle.values))
        if auth:
            fields["auth_style"] = auth
        for key in ("zero_data_retention", "enabled"):
            flag = r.flag(key)
            if flag is not None:
                fields[key] = flag
        regions = r.str_list("regions")
        if regions is not None:
            fields["regions"] = regions
        if slug and slug not in ctx.providers:
            spec = PROVIDERS_BY_SLUG.get(slug)
            defaults: dict[str, Any] = (
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    "base_url": spec.base_url,
                    "auth_style": spec.auth_style,
                    "regions": list(spec.regions),
                }
                if spec
                else {}
            )
            fields = {**defaults, **fields}
            if "kind" not in fields:
                r.fail("kind", "is required for a new provider")
            if "name" not in fields:
                fields["name"] = slug
            if "auth_style" not in fields and "kind" in fields:
                fields["auth_style"] = DEFAULT_AUTH[ProviderKind(fields["kind"])]
        if slug:
            ctx.file_providers[slug] = fields
        if slug and r.ok:
            plans.append(ProviderPlan(slug, fields))
    return plans


def _apply_providers(plans: list[ProviderPlan], ctx: Context) -> None:
    for plan in plans:
        provider, changed = provider_upsert(slug=plan.slug, **plan.fields)
        ctx.providers[plan.slug] = provider
        _report(ctx, "provider", plan.slug, changed)


# ---------------------------------------------------------------- credentials


@dataclass
class CredentialPlan:
    name: str
    kind: str
    secret: CredentialSecret = field(repr=False)
    provider: str | None
    source: str


_SECRET_FIELDS = ("api_key", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def _validate_credentials(items: list[dict[str, Any]], ctx: Context) -> list[CredentialPlan]:
    plans: list[CredentialPlan] = []
    allowed = {"name", "provider", *_SECRET_FIELDS, *(f"{f}_env" for f in _SECRET_FIELDS)}
    for index, item in enumerate(items):
        r = _Reader(item, f"credentials[{index}]", ctx, allowed)
        name = r.slug("name", required=True)
        provider = r.slug("provider")
        if provider and not ctx.provider_exists(provider):
            r.fail("provider", f"unknown provider {provider!r}")
        values: dict[str, str] = {}
        sources = []
        for secret_field in _SECRET_FIELDS:
            env_name = r.text(f"{secret_field}_env")
            literal = r.text(secret_field)
            if env_name is not None and literal is not None:
                r.fail(secret_field, f"give {secret_field} or {secret_field}_env, not both")
            elif env_name is not None:
                value = ctx.environ.get(env_name, "")
                if not value:
                    r.fail(f"{secret_field}_env", f"environment variable {env_name} is not set")
                values[secret_field] = value
                sources.append(f"{secret_field}=${env_name}")
            elif literal is not None:
                values[secret_field] = literal
                sources.append(f"{secret_field}=<file>")
        kind = CredentialKind.AWS if any(k.startswith("aws_") for k in values) else None
        if kind is None:
            kind = CredentialKind.API_KEY
            if "api_key" not in values:
                r.fail("api_key_env", "a credential needs api_key_env (or the AWS fields)")
        elif not ({"aws_access_key_id", "aws_secret_access_key"} <= set(values)):
            r.fail("aws_secret_access_key_env", "an AWS credential needs the key id and secret")
        if name:
            ctx.credentials.add(name)  # known even when invalid: report only the real error
        if name and r.ok:
            plans.append(
                CredentialPlan(
                    name=name,
                    kind=kind,
                    secret=CredentialSecret(**values),
                    provider=provider,
                    source=", ".join(sources),
                )
            )
    return plans


def _apply_credentials(plans: list[CredentialPlan], ctx: Context) -> None:
    for plan in plans:
        provider = ctx.providers[plan.provider] if plan.provider else None
        _, changed = credential_upsert(
            name=plan.name,
            kind=plan.kind,
            secret=plan.secret,
            provider=provider,
            source=plan.source,
        )
        _report(ctx, "credential", plan.name, changed)


# ---------------------------------------------------------------- models


@dataclass
class ModelPlan:
    canonical_id: str
    fields: dict[str, Any]
    price: PriceInput | None
    effective_from: datetime | None
    create_provider: str | None = None
    create_name: str | None = None


_PRICE_KEYS = ("input", "output", "cached_input", "cache_write", "reasoning")


def _read_price(r: _Reader, ctx: Context) -> tuple[PriceInput | None, datetime | None]:
    table = r.table("price")
    if table is None:
        return None, None
    path = f"{r.path}.price"
    allowed = {f"{k}_per_token" for k in _PRICE_KEYS} | {f"{k}_per_million" for k in _PRICE_KEYS}
    allowed.add("effective_from")
    values: dict[str, Decimal | None] = {}
    for key in sorted(table):
        if key not in allowed:
            ctx.error(f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
            r.ok = False
    for name in _PRICE_KEYS:
        per_token, per_million = table.get(f"{name}_per_token"), table.get(f"{name}_per_million")
        if per_token is not None and per_million is not None:
            ctx.error(f"{path}.{name}_per_token", f"give {name}_per_token or _per_million")
            r.ok = False
        elif per_token is not None:
            values[name] = _decimal(per_token, f"{path}.{name}_per_token", ctx)
            r.ok = r.ok and values[name] is not None
        elif per_million is not None:
            million = _decimal(per_million, f"{path}.{name}_per_million", ctx)
            per = None if million is None else million / 1_000_000
            if per is not None and per != per.quantize(Decimal("1e-12")):
                ctx.error(f"{path}.{name}_per_million", "is finer than 1e-12 per token")
                per = None
            values[name] = per
            r.ok = r.ok and per is not None
    for name in ("input", "output"):
        if name not in values:
            ctx.error(f"{path}.{name}_per_token", "is required (or _per_million)")
            r.ok = False
    effective_from = None
    raw_when = table.get("effective_from")
    if raw_when is not None:
        effective_from = raw_when if isinstance(raw_when, datetime) else None
        if isinstance(raw_when, str):
            effective_from = parse_datetime(raw_when)
        if effective_from is None:
            ctx.error(f"{path}.effective_from", f"expected an ISO 8601 time, got {raw_when!r}")
            r.ok = False
        elif timezone.is_naive(effective_from):
            ctx.error(f"{path}.effective_from", "needs a time zone (e.g. 2026-12-01T00:00:00Z)")
            r.ok = False
    if not r.ok:
        return None, None
    price = PriceInput(
        input_per_token=values["input"],  # type: ignore[arg-type]
        output_per_token=values["output"],  # type: ignore[arg-type]
        cached_input_per_token=values.get("cached_input"),
        cache_write_per_token=values.get("cache_write"),
        reasoning_per_token=values.get("reasoning"),
    )
    return price, effective_from


def _validate_models(items: list[dict[str, Any]], ctx: Context) -> list[ModelPlan]:
    plans: list[ModelPlan] = []
    allowed = {"id", "display_name", "family", "mode", "context_window", "max_output_tokens",
               "output_vector_size", "quality_tier", "status", "capabilities", "price",
               "timeouts", "released_on"}  # fmt: skip
    for index, item in enumerate(items):
        r = _Reader(item, f"models[{index}]", ctx, allowed)
        model_id = r.text("id", required=True)
        fields: dict[str, Any] = {}
        for key in ("display_name", "family"):
            value = r.text(key)
            if value is not None:
                fields[key] = value
        mode = r.choice("mode", list(ModelMode.values))
        if mode:
            fields["mode"] = mode
        status = r.choice("status", list(ModelStatus.values))
        if status:
            fields["status"] = status
        for key in ("context_window", "max_output_tokens", "output_vector_size"):
            number = r.integer(key, min_value=1)
            if number is not None:
                fields[key] = number
        released_on = r.day("released_on")
        if released_on is not None:
            fields["released_on"] = released_on
        tier = item.get("quality_tier") if isinstance(item, dict) else None
        if tier is not None:
            if isinstance(tier, str) and tier.lower() in TIER_NAMES:
                fields["quality_tier"] = TIER_NAMES[tier.lower()]
            elif isinstance(tier, int) and not isinstance(tier, bool) and tier in QualityTier:
                fields["quality_tier"] = tier
            else:
                names = ", ".join(f"{v} or {k!r}" for k, v in TIER_NAMES.items())
                r.fail("quality_tier", f"expected {names}; got {tier!r}")
        capabilities = r.table("capabilities")
        if capabilities is not None:
            for key, value in capabilities.items():
                path = f"{r.path}.capabilities.{key}"
                if key not in CAPABILITIES:
                    ctx.error(path, f"unknown capability (known: {', '.join(CAPABILITIES)})")
                    r.ok = False
                elif not isinstance(value, bool):
                    ctx.error(path, f"expected true or false, got {value!r}")
                    r.ok = False
                else:
                    fields[f"supports_{key}"] = value
        timeouts = r.timeouts()
        if timeouts is not None:
            fields["timeouts"] = timeouts
        price, effective_from = _read_price(r, ctx)
        plan = ModelPlan(model_id or "", fields, price, effective_from)
        if model_id and model_id not in ctx.models:
            provider_slug, _, name = model_id.partition("/")
            if not name or not ctx.provider_exists(provider_slug):
                r.fail("id", f"unknown model {model_id!r} (a new model is 'provider/name' "
                             "of a known provider)")  # fmt: skip
            elif price is None:
                r.fail("price", f"new model {model_id!r} needs a price")
            else:
                plan.create_provider, plan.create_name = provider_slug, name
                ctx.file_models[model_id] = provider_slug
        if model_id and r.ok:
            plans.append(plan)
            ctx.file_model_fields[model_id] = fields
    return plans


def _apply_models(plans: list[ModelPlan], ctx: Context) -> None:
    for plan in plans:
        if plan.create_provider and plan.canonical_id not in ctx.models:
            assert plan.price is not None and plan.create_name is not None
            model = model_create(
                provider=ctx.providers[plan.create_provider],
                provider_model_name=plan.create_name,
                price=plan.price,
                fields=plan.fields,
                effective_from=plan.effective_from,
            )
            ctx.models[plan.canonical_id] = model
            _report(ctx, "model", plan.canonical_id, ["created"])
            continue
        changed = model_override(
            model=ctx.models[plan.canonical_id],
            fields=plan.fields,
            price=plan.price,
            price_effective_from=plan.effective_from,
        )
        _report(ctx, "model", plan.canonical_id, changed)


# ---------------------------------------------------------------- deployments


@dataclass
class DeploymentPlan:
    name: str
    model: str
    provider: str | None
    fields: dict[str, Any]
    credential: str | None


_DEPLOYMENT_COMMON = {"provider", "base_url", "region", "credential", "weight", "priority",
                      "rpm_limit", "tpm_limit", "enabled", "headers", "api_version",
                      "timeouts"}  # fmt: skip


def _read_deployment_fields(r: _Reader, ctx: Context) -> tuple[dict[str, Any], str | None]:
    fields: dict[str, Any] = {}
    for key in ("base_url", "region", "api_version", "provider_model_name"):
        value = r.text(key)
        if value is not None:
            fields[key] = value
    for key, minimum in (("weight", 0), ("priority", -(2**31)), ("rpm_limit", 1), ("tpm_limit", 1)):
        number = r.integer(key, min_value=minimum)
        if number is not None:
            fields[key] = number
    enabled = r.flag("enabled")
    if enabled is not None:
        fields["enabled"] = enabled
    timeouts = r.timeouts()
    if timeouts is not None:
        fields["timeouts"] = timeouts
    headers = r.table("headers")
    if headers is not None:
        if not all(isinstance(v, str) for v in headers.values()):
            r.fail("headers", "expected string values")
        fields["headers"] = headers
    credential = r.slug("credential")
    if credential and credential not in ctx.credentials:
        r.fail("credential", f"unknown credential {credential!r}")
    provider = r.slug("provider")
    if provider and not ctx.provider_exists(provider):
        r.fail("provider", f"unknown provider {provider!r}")
    return fields, credential


def _validate_deployments(items: list[dict[str, Any]], ctx: Context) -> list[DeploymentPlan]:
    plans: list[DeploymentPlan] = []
    for index, item in enumerate(items):
        allowed = {"name", "model", "provider_model_name", *_DEPLOYMENT_COMMON}
        r = _Reader(item, f"deployments[{index}]", ctx, allowed)
        name = r.slug("name", required=True)
        model_id = r.text("model", required=True)
        fields, credential = _read_deployment_fields(r, ctx)
        if model_id is not None:
            model_id = _resolve_model(model_id, r, ctx)
        if name and model_id and r.ok:
            provider = item.get("provider")
            plans.append(DeploymentPlan(name, model_id, provider, fields, credential))
    return plans


def _resolve_model(model_id: str, r: _Reader, ctx: Context) -> str | None:
    if model_id in ctx.models or model_id in ctx.file_models:
        return model_id
    candidates = ctx.bare_names.get(model_id, [])
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        r.fail("model", f"{model_id!r} is ambiguous: {', '.join(sorted(candidates))}")
    else:
        r.fail("model", f"unknown model {model_id!r} (run catalog_import first?)")
    return None


def _validate_deployment_sets(items: list[dict[str, Any]], ctx: Context) -> list[DeploymentPlan]:
    """``[[deployment_sets]]``: one deployment per active catalog model of the listed providers
    (at ``provider`` when it names another one). With ``provider_model_names = "catalog"``,
    only the models that ``provider`` lists in the catalog too (``same_model_key``), each under
    that provider's own name for it (Bedrock's ``anthropic.claude-...-v1:0``)."""
    plans: list[DeploymentPlan] = []
    for index, item in enumerate(items):
        allowed = {"name", "providers", "modes", "exclude", "provider_model_names",
                   *_DEPLOYMENT_COMMON}  # fmt: skip
        r = _Reader(item, f"deployment_sets[{index}]", ctx, allowed)
        prefix = r.slug("name", required=True)
        providers = r.str_list("providers")
        if providers is None:
            r.fail("providers", "is required (a list of provider slugs)")
            providers = []
        for slug in providers:
            if not ctx.provider_exists(slug):
                r.fail("providers", f"unknown provider {slug!r}")
        modes = r.str_list("modes") or [ModelMode.CHAT]
        for mode in modes:
            if mode not in ModelMode.values:
                r.fail("modes", f"unknown mode {mode!r}")
        exclude = set(r.str_list("exclude") or [])
        fields, credential = _read_deployment_fields(r, ctx)
        via = r.text("provider")
        names = r.choice("provider_model_names", ["model", "catalog"]) or "model"
        if names == "catalog" and not via:
            r.fail("provider_model_names", '"catalog" needs a provider to look the names up at')
        if not (prefix and r.ok):
            continue
        catalog = _models_after_file(ctx)
        counterparts = _counterparts(ctx, catalog, via) if names == "catalog" and via else None
        used: set[str] = set()
        for canonical_id, (provider, mode, status) in sorted(catalog.items()):
            active = status == ModelStatus.ACTIVE and canonical_id not in exclude
            if not (active and provider in providers and mode in modes):
                continue
            plan_fields = dict(fields)
            if counterparts is not None:
                upstream = counterparts.get((mode, same_model_key(canonical_id)))
                if upstream is None:
                    continue  # the provider does not serve this model
                plan_fields.setdefault("provider_model_name", upstream)
            name = _deployment_name(prefix, canonical_id, used)
            plans.append(DeploymentPlan(name, canonical_id, via, plan_fields, credential))
    return plans


def _counterparts(
    ctx: Context, catalog: dict[str, tuple[str, str, str]], provider: str
) -> dict[tuple[str, str], str]:
    """(mode, same-model key) -> ``provider``'s own name for its active catalog model. Of
    several, a ``maker.model`` id without a region prefix wins, then one without a Vertex-style
    ``@version``, then the shortest (``anthropic.claude-sonnet-4-6`` over
    ``us.anthropic.claude-sonnet-4-6``)."""

    def rank(name: str) -> tuple[bool, bool, int, str]:
        return (BEDROCK_STYLE.match(name) is None, "@" in name, len(name), name)

    found: dict[tuple[str, str], str] = {}
    for canonical_id, (owner, mode, status) in sorted(catalog.items()):
        model = ctx.models.get(canonical_id)
        if owner != provider or status != ModelStatus.ACTIVE or model is None:
            continue
        name = model.provider_model_name
        key = (mode, same_model_key(name))
        if key not in found or rank(name) < rank(found[key]):
            found[key] = name
    return found


def _models_after_file(ctx: Context) -> dict[str, tuple[str, str, str]]:
    """canonical id -> (provider slug, mode, status) once this file's [[models]] applied."""
    models = {m.canonical_id: (m.provider.slug, m.mode, m.status) for m in ctx.models.values()}
    for canonical_id, provider in ctx.file_models.items():
        models[canonical_id] = (provider, ModelMode.CHAT, ModelStatus.ACTIVE)
    for canonical_id, fields in ctx.file_model_fields.items():
        if canonical_id in models:
            provider, mode, status = models[canonical_id]
            models[canonical_id] = (
                provider,
                fields.get("mode", mode),
                fields.get("status", status),
            )
    return models


def _deployment_name(prefix: str, canonical_id: str, used: set[str]) -> str:
    slug = re.sub(r"[^a-z0-9_]+", "-", canonical_id.lower()).strip("-")
    name = f"{prefix}-{slug}"
    if len(name) > 150 or name in used:
        digest = hashlib.sha256(canonical_id.encode()).hexdigest()[:8]
        name = f"{name[:140]}-{digest}"
    used.add(name)
    return name


def _apply_deployments(plans: list[DeploymentPlan], ctx: Context) -> None:
    credentials = {c.name: c for c in Credential.objects.all()}
    for plan in plans:
        model = ctx.models[plan.model]
        fields = dict(plan.fields)
        fields["model"] = model
        fields["provider"] = ctx.providers[plan.provider] if plan.provider else model.provider
        if plan.credential:
            fields["credential"] = credentials[plan.credential]
        _, changed = deployment_upsert(name=plan.name, **fields)
        _report(ctx, "deployment", plan.name, changed)


def _apply_deployment_sets(plans: list[DeploymentPlan], ctx: Context) -> None:
    _apply_deployments(plans, ctx)


register_section(Section("providers", 10, _validate_providers, _apply_providers))
register_section(Section("credentials", 20, _validate_credentials, _apply_credentials))
register_section(Section("models", 30, _validate_models, _apply_models))
register_section(Section("deployments", 40, _validate_deployments, _apply_deployments))
register_section(Section("deployment_sets", 50, _validate_deployment_sets, _apply_deployment_sets))


# ---------------------------------------------------------------- run


def _report(ctx: Context, kind: str, name: str, changed: list[str]) -> None:
    if not changed:
        return
    if changed == ["created"]:
        ctx.changes.append(f"{kind} {name}: created")
    else:
        ctx.changes.append(f"{kind} {name}: updated {', '.join(changed)}")


@dataclass
class ApplyResult:
    changes: list[str]
    unchanged: int


def config_apply(*, data: dict[str, Any], environ: Mapping[str, str] | None = None) -> ApplyResult:
    """Validate every section, then apply them all in one transaction."""
    ctx = Context(environ=os.environ if environ is None else environ)
    data = _interpolate(data, "", ctx)
    version = data.get("version", 1)
    if version != 1:
        ctx.error("version", f"this MegaRouter reads version 1 files, got {version!r}")
    known = {"version", *SECTIONS}
    for key in sorted(set(data) - known):
        hint = " (routing policies arrive with the routing engine)" if key == "policies" else ""
        ctx.error(key, f"unknown section{hint}; known: {', '.join(sorted(SECTIONS))}")
    ctx.providers = {p.slug: p for p in Provider.objects.all()}
    ctx.credentials = set(Credential.objects.values_list("name", flat=True))
    ctx.models = {m.canonical_id: m for m in Model.objects.select_related("provider")}
    for model in ctx.models.values():
        ctx.bare_names.setdefault(model.provider_model_name, []).append(model.canonical_id)
    sections = sorted(SECTIONS.values(), key=lambda s: s.order)
    plans = {s.name: s.validate(_items(data, s.name, ctx), ctx) for s in sections}
    if ctx.errors:
        raise ConfigFileError(ctx.errors)
    total = 0
    with catalog_batch():
        for section in sections:
            total += len(plans[section.name])
            section.apply(plans[section.name], ctx)
    return ApplyResult(changes=ctx.changes, unchanged=total - len(ctx.changes))


def config_apply_file(path: str | Path, *, environ: Mapping[str, str] | None = None) -> ApplyResult:
    return config_apply(data=config_load(Path(path)), environ=environ)
