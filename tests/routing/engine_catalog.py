"""A small catalog for the engine tests: two providers, five models, seven deployments.

| model            | tier | $/M in, out | tools vision schema | context | deployments (region)      |
|------------------|------|-------------|---------------------|---------|---------------------------|
| alpha/a-small    | 1    | 0.1, 0.2    | yes   no     no     | 16k     | a-small-eu (eu-west-1)    |
| alpha/a-mid      | 2    | 1, 2        | yes   yes    no     | 128k    | a-mid-us (p0), a-mid-eu (p1) |
| alpha/a-large    | 4    | 10, 30      | yes   yes    yes    | 200k    | a-large-us                |
| beta/b-mid       | 2    | 0.8, 1.6    | no    no     no     | 8k      | b-mid-eu                  |
| beta/b-large     | 3    | 3, 15       | yes   no     yes    | 128k    | b-large-us                |

beta is a zero-data-retention provider; alpha is not.
"""

from __future__ import annotations

from decimal import Decimal

from routing.models import Deployment
from tests.routing.factories import ModelFactory, ProviderFactory

M = Decimal("0.000001")  # one dollar per million tokens, per token


def build_catalog() -> dict[str, Deployment]:
    alpha = ProviderFactory(slug="alpha", zero_data_retention=False)
    beta = ProviderFactory(slug="beta", zero_data_retention=True)
    specs = [
        (alpha, "a-small", 1, ("0.1", "0.2"), (True, False, False), 16_000),
        (alpha, "a-mid", 2, ("1", "2"), (True, True, False), 128_000),
        (alpha, "a-large", 4, ("10", "30"), (True, True, True), 200_000),
        (beta, "b-mid", 2, ("0.8", "1.6"), (False, False, False), 8_000),
        (beta, "b-large", 3, ("3", "15"), (True, False, True), 128_000),
    ]
    models = {}
    for provider, name, tier, (pin, pout), (tools, vision, schema), window in specs:
        models[name] = ModelFactory(
            provider=provider,
            provider_model_name=name,
            quality_tier=tier,
            price=(Decimal(pin) * M, Decimal(pout) * M),
            supports_tools=tools,
            supports_vision=vision,
            supports_json_schema=schema,
            context_window=window,
        )
    deployments = {}
    for name, model, region, priority in [
        ("a-small-eu", "a-small", "eu-west-1", 0),
        ("a-mid-us", "a-mid", "us-east-1", 0),
        ("a-mid-eu", "a-mid", "eu-west-1", 1),
        ("a-large-us", "a-large", "us-east-1", 0),
        ("b-mid-eu", "b-mid", "eu-west-1", 0),
        ("b-large-us", "b-large", "us-east-1", 0),
    ]:
        m = models[model]
        deployments[name] = Deployment.objects.create(
            name=name, model=m, provider=m.provider, region=region, priority=priority
        )
    return deployments
