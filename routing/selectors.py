"""Reads from the catalog database (off the hot path; the hot path uses routing.catalog)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

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


def provider_health_summary(health: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per provider with deployments: how many are enabled, healthy, on trial, with
    the breaker open or with no data yet, their median latency and error rate (the state routing
    uses, ``health``: ``routing.health.stats_for`` of every deployment), problems first: open
    breakers, then trials, then the error rate."""
    rows: dict[int, dict[str, Any]] = {}
    latencies: dict[int, list[float]] = {}
    deployments = Deployment.objects.values(
        "pk", "enabled", "provider_id", "provider__name", "provider__slug", "provider__enabled"
    )
    for d in deployments:
        row = rows.setdefault(
            d["provider_id"],
            {
                "slug": d["provider__slug"],
                "name": d["provider__name"],
                "deployments": 0,
                "enabled": 0,
                "healthy": 0,
                "trial": 0,
                "open": 0,
                "no_data": 0,
                "samples": 0,
                "failures": 0.0,
            },
        )
        row["deployments"] += 1
        if not (d["enabled"] and d["provider__enabled"]):
            continue
        row["enabled"] += 1
        h = health.get(d["pk"])
        if h is None:
            row["no_data"] += 1
            continue
        state = {"open": "open", "half_open": "trial"}.get(h["state"], "healthy")
        row[state] += 1
        row["samples"] += h["samples"]
        row["failures"] += h["error_rate"] * h["samples"]
        if h["latency_ms"] is not None:
            latencies.setdefault(d["provider_id"], []).append(h["latency_ms"])
    out = []
    for provider_id, row in rows.items():
        found = sorted(latencies.get(provider_id, []))
        row["latency_ms"] = found[len(found) // 2] if found else None
        row["error_rate"] = row.pop("failures") / row["samples"] if row["samples"] else None
        row["problems"] = row["open"] + row["trial"]
        out.append(row)
    out.sort(key=lambda r: (-r["open"], -r["trial"], -(r["error_rate"] or 0), r["name"]))
    return out
