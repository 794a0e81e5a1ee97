"""Reads from the catalog database (off the hot path; the hot path uses routing.catalog)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from routing.models import CatalogVersion, Deployment, Model, ModelPrice


def price_at(model_id: str | int, when: datetime) -> ModelPrice | None:
    """The price version in force at ``when`` for a model (canonical id or primary key):
    the latest version with ``effective_from <= when``; None before the first version."""
    prices = ModelPrice.objects.filter(effective_from__lte=when)
    if isinstance(model_id, int):
        prices = prices.filter(model_id=model_id)
    else:
        prices = prices.filter(model__canonical_id=model_id)
    return prices.order_by("-effective_from").first()


def model_price_history(model_id: str) -> list[ModelPrice]:
    return list(ModelPrice.objects.filter(model__canonical_id=model_id).order_by("effective_from"))


def model_list(*, provider: str | None = None, mode: str | None = None) -> QuerySet[Model]:
    models = Model.objects.select_related("provider").order_by("canonical_id")
    if provider:
        models = models.filter(provider__slug=provider)
    if mode:
        models = models.filter(mode=mode)
    return models


def deployment_list(*, enabled_only: bool = False) -> QuerySet[Deployment]:
    deployments = Deployment.objects.select_related("model", "provider", "credential")
    if enabled_only:
        deployments = deployments.filter(enabled=True, provider__enabled=True)
    return deployments.order_by("model__canonical_id", "priority", "name")


def catalog_version_token() -> tuple[int, str]:
    row = CatalogVersion.objects.filter(pk=1).values_list("version", "token").first()
    return row if row is not None else (0, "initial")
