"""Writes to the catalog. Every service runs in one transaction and bumps the catalog version,
so every process rebuilds its snapshot (``routing.catalog``) within about a second."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.db.models import Model as DjangoModel
from django.utils import timezone

from routing.crypto import CredentialSecret, decrypt_secret, encrypt_secret, rotate_ciphertext
from routing.models import (
    CatalogVersion,
    Credential,
    CredentialKind,
    Deployment,
    Model,
    ModelPrice,
    Provider,
)

CATALOG_VERSION_CACHE_KEY = "routing:catalog-version"


class CatalogError(Exception):
    """A catalog write was refused; the message says why."""


# ---------------------------------------------------------------- version


_batch = threading.local()


@contextmanager
def catalog_batch() -> Iterator[None]:
    """Group many writes: one transaction, one version bump at the end (if anything changed)."""
    outer = getattr(_batch, "depth", 0) == 0
    with transaction.atomic():
        _batch.depth = getattr(_batch, "depth", 0) + 1
        if outer:
            _batch.dirty = False
            catalog_write_lock()
        try:
            yield
        finally:
            _batch.depth -= 1
        if outer and _batch.dirty:
            _batch.dirty = False
            catalog_version_bump()


def catalog_write_lock() -> None:
    """Serialize catalog-wide writers (imports, operator files): lock the version row for the
    rest of the current transaction (PostgreSQL; SQLite serializes writers by itself)."""
    if not CatalogVersion.objects.select_for_update().filter(pk=1).exists():
        CatalogVersion.objects.get_or_create(pk=1)
        CatalogVersion.objects.select_for_update().filter(pk=1).exists()


def catalog_version_bump() -> str:
    """Mark the catalog changed. Call inside the writing transaction. Returns the new token
    (an empty string inside ``catalog_batch``, which bumps once when it ends)."""
    if getattr(_batch, "depth", 0) > 0:
        _batch.dirty = True
        return ""
    token = uuid.uuid4().hex
    with transaction.atomic():
        updated = CatalogVersion.objects.filter(pk=1).update(version=F("version") + 1, token=token)
        if not updated:
            CatalogVersion.objects.create(pk=1, version=1, token=token)
    # Set now (a process that sees it early re-reads the row, which still has the old token,
    # and tries again next second) and again after commit (the authoritative moment).
    cache.set(CATALOG_VERSION_CACHE_KEY, token, timeout=None)
    transaction.on_commit(lambda: cache.set(CATALOG_VERSION_CACHE_KEY, token, timeout=None))
    return token


# ---------------------------------------------------------------- providers


PROVIDER_FIELDS = ("name", "kind", "base_url", "auth_style", "zero_data_retention", "regions")


def provider_upsert(*, slug: str, **fields: Any) -> tuple[Provider, list[str]]:
    """Create the provider or update the given fields. Returns it and the fields that changed
    (``["created"]`` for a new one, ``[]`` when nothing changed)."""
    unknown = set(fields) - {*PROVIDER_FIELDS, "enabled"}
    if unknown:
        raise CatalogError(f"unknown provider fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        provider = Provider.objects.select_for_update().filter(slug=slug).first()
        if provider is None:
            provider = Provider.objects.create(slug=slug, **fields)
            catalog_version_bump()
            return provider, ["created"]
        changed = _assign(provider, fields)
        if changed:
            provider.save()
            catalog_version_bump()
        return provider, changed


# ---------------------------------------------------------------- prices


@dataclass(frozen=True, slots=True)
class PriceInput:
    input_per_token: Decimal
    output_per_token: Decimal
    cached_input_per_token: Decimal | None = None
    cache_write_per_token: Decimal | None = None
    reasoning_per_token: Decimal | None = None

    def same_as(self, price: ModelPrice | PriceInput | None) -> bool:
        if price is None:
            return False
        return all(
            _dec_eq(getattr(self, name), getattr(price, name))
            for name in (
                "input_per_token",
                "output_per_token",
                "cached_input_per_token",
                "cache_write_per_token",
                "reasoning_per_token",
            )
        )


def _dec_eq(a: Decimal | None, b: Decimal | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Decimal(a).quantize(Decimal("1e-12")) == Decimal(b).quantize(Decimal("1e-12"))


def model_price_set(
    *,
    model: Model,
    price: PriceInput,
    effective_from: datetime | None = None,
    source: str = "",
) -> ModelPrice | None:
    """Add a price version. Returns None when it would change nothing: the version in force at
    ``effective_from`` (now when not given) already has these prices. Never edits a version;
    a different price at an existing ``effective_from`` is refused."""
    when = effective_from or timezone.now()
    with transaction.atomic():
        Model.objects.select_for_update().filter(pk=model.pk).first()
        exact = ModelPrice.objects.filter(model=model, effective_from=when).first()
        if exact is not None:
            if price.same_as(exact):
                return None
            raise CatalogError(
                f"{model.canonical_id}: a price version from {when.isoformat()} already exists "
                "with other prices; versions are never edited, use a later effective_from"
            )
        in_force = (
            ModelPrice.objects.filter(model=model, effective_from__lte=when)
            .order_by("-effective_from")
            .first()
        )
        later = ModelPrice.objects.filter(model=model, effective_from__gt=when).exists()
        if not later and price.same_as(in_force):
            return None
        version = ModelPrice.objects.create(
            model=model,
            effective_from=when,
            input_per_token=price.input_per_token,
            output_per_token=price.output_per_token,
            cached_input_per_token=price.cached_input_per_token,
            cache_write_per_token=price.cache_write_per_token,
            reasoning_per_token=price.reasoning_per_token,
            source=source,
        )
        catalog_version_bump()
        return version


# ---------------------------------------------------------------- models

MODEL_OVERRIDABLE = (
    "display_name",
    "family",
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
    "mode",
    "timeouts",
    "released_on",
)


def model_override(
    *,
    model: Model,
    fields: dict[str, Any],
    price: PriceInput | None = None,
    price_effective_from: datetime | None = None,
    source: str = "operator",
) -> list[str]:
    """Set operator values on a model. The fields (and ``price``) are recorded in
    ``operator_overrides`` so a later catalog_import leaves them alone. Returns what changed."""
    unknown = set(fields) - set(MODEL_OVERRIDABLE)
    if unknown:
        raise CatalogError(f"fields that cannot be overridden: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        model = Model.objects.select_for_update().get(pk=model.pk)
        changed = _assign(model, fields)
        locked = set(model.operator_overrides) | set(fields) | ({"price"} if price else set())
        if sorted(locked) != sorted(model.operator_overrides):
            model.operator_overrides = sorted(locked)
            if not changed:
                changed = ["operator_overrides"]
        if changed:
            model.save()
            catalog_version_bump()
        if price is not None:
            version = model_price_set(
                model=model, price=price, effective_from=price_effective_from, source=source
            )
            if version is not None:
                changed.append("price")
        return changed


def model_create(
    *,
    provider: Provider,
    provider_model_name: str,
    price: PriceInput,
    fields: dict[str, Any] | None = None,
    source: str = "operator",
    effective_from: datetime | None = None,
) -> Model:
    """Add a model the imported catalogs do not have (a self-hosted or private model)."""
    fields = dict(fields or {})
    unknown = set(fields) - set(MODEL_OVERRIDABLE)
    if unknown:
        raise CatalogError(f"unknown model fields: {', '.join(sorted(unknown))}")
    fields.setdefault("display_name", provider_model_name)
    with transaction.atomic():
        model = Model.objects.create(
            canonical_id=f"{provider.slug}/{provider_model_name}",
            provider=provider,
            provider_model_name=provider_model_name,
            source=source,
            operator_overrides=sorted({*fields, "price"}),
            **fields,
        )
        model_price_set(model=model, price=price, effective_from=effective_from, source=source)
        catalog_version_bump()
        return model


# ---------------------------------------------------------------- credentials


def credential_upsert(
    *,
    name: str,
    kind: str,
    secret: CredentialSecret,
    provider: Provider | None = None,
    source: str = "",
) -> tuple[Credential, list[str]]:
    """Create the credential or replace its secret. The secret is stored encrypted; an
    unchanged secret writes nothing (the stored one is decrypted and compared)."""
    if kind not in CredentialKind.values:
        raise CatalogError(f"unknown credential kind {kind!r}")
    if kind == CredentialKind.API_KEY and not secret.api_key:
        raise CatalogError(f"credential {name}: an api_key credential needs a key")
    if kind == CredentialKind.AWS and not (
        secret.aws_access_key_id and secret.aws_secret_access_key
    ):
        raise CatalogError(f"credential {name}: an aws credential needs an access key and secret")
    with transaction.atomic():
        credential = Credential.objects.select_for_update().filter(name=name).first()
        now = timezone.now()
        if credential is None:
            credential = Credential.objects.create(
                name=name,
                kind=kind,
                provider=provider,
                source=source,
                ciphertext=encrypt_secret(secret),
                secret_updated_at=now,
            )
            catalog_version_bump()
            return credential, ["created"]
        changed = _assign(credential, {"kind": kind, "provider": provider, "source": source})
        if decrypt_secret(credential.ciphertext) != secret:
            credential.ciphertext = encrypt_secret(secret)
            credential.secret_updated_at = now
            changed.append("secret")
        if changed:
            credential.save()
            catalog_version_bump()
        return credential, changed


def credentials_rotate() -> int:
    """Re-encrypt every credential with the primary key. Returns how many were rewritten."""
    count = 0
    with transaction.atomic():
        for credential in Credential.objects.select_for_update().order_by("pk"):
            credential.ciphertext = rotate_ciphertext(credential.ciphertext)
            credential.save(update_fields=["ciphertext", "updated_at"])
            count += 1
        if count:
            catalog_version_bump()
    return count


# ---------------------------------------------------------------- deployments

DEPLOYMENT_FIELDS = (
    "model",
    "provider",
    "base_url",
    "provider_model_name",
    "api_version",
    "region",
    "credential",
    "weight",
    "priority",
    "headers",
    "rpm_limit",
    "tpm_limit",
    "timeouts",
    "enabled",
)


def deployment_upsert(*, name: str, **fields: Any) -> tuple[Deployment, list[str]]:
    """Create the deployment or update the given fields; returns what changed."""
    unknown = set(fields) - set(DEPLOYMENT_FIELDS)
    if unknown:
        raise CatalogError(f"unknown deployment fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().filter(name=name).first()
        if deployment is None:
            if "model" not in fields:
                raise CatalogError(f"deployment {name}: a new deployment needs a model")
            fields.setdefault("provider", fields["model"].provider)
            deployment = Deployment.objects.create(name=name, **fields)
            catalog_version_bump()
            return deployment, ["created"]
        changed = _assign(deployment, fields)
        if changed:
            deployment.save()
            catalog_version_bump()
        return deployment, changed


# ---------------------------------------------------------------- helpers


def _is_fk(instance: Any, name: str) -> bool:
    try:
        return instance._meta.get_field(name).is_relation
    except Exception:  # FieldDoesNotExist
        return False


def _assign(instance: Any, fields: dict[str, Any]) -> list[str]:
    changed = []
    for name, value in fields.items():
        if isinstance(value, DjangoModel) or (value is None and _is_fk(instance, name)):
            if getattr(instance, f"{name}_id") != (value.pk if value is not None else None):
                setattr(instance, name, value)
                changed.append(name)
            continue
        current = getattr(instance, name)
        if isinstance(current, Decimal) or isinstance(value, Decimal):
            equal = _dec_eq(current, value)
        else:
            equal = current == value
        if not equal:
            setattr(instance, name, value)
            changed.append(name)
    return changed
