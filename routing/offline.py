"""The served routing path, offline: a training file's models as a catalog snapshot, and a
router that makes every evaluation decision through ``routing.engine.route``.

``routing_eval`` and ``routing_cv`` judge the router the gateway runs, not a re-implementation:
each record is routed with ``auto`` under the evaluated strategy, by the same engine call
``gateway`` makes (hard filters, pruning, strategy ranking, the policy merge), with a policy
that restricts ``allowed_models`` to the record's candidates, sets ``reference_model`` to its
most expensive candidate (the unit of balanced's cost term, as ``reference_model`` is on the
live path) and sweeps ``cost_quality``, the policy field users set, over the report's points.

The snapshot: one model per training-file model, canonical id = its name in the file (so the
artefact's per-model heads apply, as they do to a catalog model of that name), input price =
the file's cost per prompt token (output cost folded in, output price 0), quality tier 1-4 by
the quartile of its mean score among the file's models, one deployment each on one provider.
No health samples: the engine's latency term sees every deployment's tier-based prior.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from orgs.policy import PolicySpec
from routing.catalog import CatalogSnapshot, DeploymentInfo, ModelInfo, PriceVersion, ProviderInfo
from routing.complexity import RequestFeatures, estimate
from routing.complexity.data import ModelStats, Record
from routing.complexity.evaluation import Router
from routing.complexity.model import ComplexityModel
from routing.engine import RouteRequest, route
from routing.health import HealthConfig, LocalHealth
from routing.policies import EffectivePolicy, policy_merge

PROVIDER = "offline"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def tiers(stats: dict[str, ModelStats]) -> dict[str, int]:
    """Quality tier 1-4 per model: the quartile of its mean score among the file's models."""
    ranked = sorted(stats, key=lambda m: (stats[m].quality_prior, m))
    n = len(ranked)
    return {m: 1 + (4 * i) // n for i, m in enumerate(ranked)}


def training_catalog(stats: dict[str, ModelStats]) -> CatalogSnapshot:
    """A catalog snapshot of the training file's models (see the module docstring)."""
    tier = tiers(stats)
    provider = ProviderInfo(
        id=1,
        slug=PROVIDER,
        name="Training file",
        kind="openai",
        base_url="http://offline.invalid",
        auth_style="bearer",
        zero_data_retention=True,
        regions=(),
        enabled=True,
    )
    models: dict[str, ModelInfo] = {}
    deployments: dict[str, tuple[DeploymentInfo, ...]] = {}
    counter = itertools.count(1)
    for name in sorted(stats):
        pk = next(counter)
        price = PriceVersion(
            id=pk,
            effective_from=EPOCH,
            input_per_token=Decimal(repr(stats[name].cost_per_input_token)),
            output_per_token=Decimal(0),
            cached_input_per_token=None,
            cache_write_per_token=None,
            reasoning_per_token=None,
        )
        models[name] = ModelInfo(
            id=pk,
            canonical_id=name,
            provider=PROVIDER,
            provider_model_name=name,
            display_name=name,
            family=name.rpartition("/")[2],
            mode="chat",
            context_window=None,
            max_output_tokens=None,
            supports_tools=True,
            supports_vision=True,
            supports_json_schema=True,
            supports_reasoning=False,
            supports_streaming=True,
            supports_prompt_caching=False,
            quality_tier=tier[name],
            status="active",
            prices=(price,),
        )
        deployments[name] = (
            DeploymentInfo(
                id=pk,
                name=f"offline-{pk}",
                model=name,
                provider=PROVIDER,
                kind="openai",
                base_url=provider.base_url,
                provider_model_name=name,
                api_version=None,
                region=None,
                credential_id=None,
                auth_style="bearer",
                weight=1,
                priority=0,
                rpm_limit=None,
                tpm_limit=None,
                zero_data_retention=True,
                headers=(),
            ),
        )
    return CatalogSnapshot(
        token=f"offline:{id(stats)}",
        version=0,
        built_at=0.0,
        providers={PROVIDER: provider},
        models=models,
        aliases={},
        ambiguous={},
        deployments=deployments,
        deployments_by_id={d.id: d for ds in deployments.values() for d in ds},
        _ciphertexts={},
    )


def live_router(
    stats: dict[str, ModelStats], model: ComplexityModel, *, strategy: str = "balanced"
) -> Router:
    """A ``Router`` whose every pick is ``routing.engine.route`` on ``training_catalog(stats)``
    with ``auto:<strategy>`` and the record's policy at each ``cost_quality``."""
    snapshot = training_catalog(stats)
    store = LocalHealth(HealthConfig())
    policies: dict[tuple[tuple[str, ...], float], EffectivePolicy] = {}

    def policy_for(known: tuple[str, ...], setting: float) -> EffectivePolicy:
        policy = policies.get((known, setting))
        if policy is None:
            reference = max(known, key=lambda m: (stats[m].cost_per_input_token, m))
            spec = PolicySpec(
                strategy=strategy,
                allowed_models=known,
                reference_model=reference,
                cost_quality=Decimal(repr(round(setting, 6))),
            )
            policy = policies[(known, setting)] = policy_merge([("organization", spec)])
        return policy

    def pick(record: Record, known: Sequence[str], settings: Sequence[float]) -> list[str]:
        features = RequestFeatures.from_prompt(record.prompt)
        est = estimate(features, model=model)
        request = RouteRequest(features=features)
        names = tuple(sorted(known))
        return [
            route(
                request=request,
                policy=policy_for(names, setting),
                snapshot=snapshot,
                store=store,
                estimate_=est,
            )
            .candidates[0]
            .model_id
            for setting in settings
        ]

    return pick
