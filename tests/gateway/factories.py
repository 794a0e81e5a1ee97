"""Factories: provider endpoints and normalized requests (adapter tests); tenants, keys and a
small catalog built through the orgs and routing services (the /v1 API tests, no fakes)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import factory
from django.contrib.auth import get_user_model

from gateway.providers.types import ChatRequest, Endpoint, Message, Tool

WEATHER_TOOL = Tool(
    name="get_weather",
    description="Current weather for a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 5},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)

BASE_PATHS = {
    "openai": "/openai/v1",
    "azure": "/azure",
    "anthropic": "/anthropic",
    "gemini": "/gemini",
    "bedrock": "/bedrock",
}
MODELS = {
    "openai": "gpt-4o-mini",
    "azure": "gpt-4o-prod",
    "anthropic": "claude-3-5-haiku-20241022",
    "gemini": "gemini-2.0-flash",
    "bedrock": "anthropic.claude-3-haiku-20240307-v1:0",
}


class EndpointFactory(factory.Factory):
    class Meta:
        model = Endpoint

    class Params:
        url = "http://127.0.0.1:9"

    kind = "openai"
    base_url = factory.LazyAttribute(lambda o: o.url + BASE_PATHS[o.kind])
    model = factory.LazyAttribute(lambda o: MODELS[o.kind])
    api_key = factory.LazyAttribute(lambda o: "" if o.kind == "bedrock" else "sim-test-key")
    api_version = factory.LazyAttribute(lambda o: "2024-10-21" if o.kind == "azure" else None)
    region = factory.LazyAttribute(lambda o: "us-east-1" if o.kind == "bedrock" else None)
    aws_access_key_id = factory.LazyAttribute(
        lambda o: "AKIDEXAMPLE" if o.kind == "bedrock" else None
    )
    aws_secret_access_key = factory.LazyAttribute(
        lambda o: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY" if o.kind == "bedrock" else None
    )
    headers = ()


def fault(endpoint: Endpoint, spec: str) -> Endpoint:
    """The endpoint with an ``x-sim-fault`` header (how tests inject simulator faults)."""
    return EndpointFactory(
        kind=endpoint.kind,
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=endpoint.api_key,
        api_version=endpoint.api_version,
        region=endpoint.region,
        aws_access_key_id=endpoint.aws_access_key_id,
        aws_secret_access_key=endpoint.aws_secret_access_key,
        headers=(("x-sim-fault", spec),),
    )


def chat(text: str = "Hello there, how are you today?", **kwargs: object) -> ChatRequest:
    messages = [
        Message(role="system", content="You are terse."),
        Message(role="user", content=text),
    ]
    return ChatRequest(messages=messages, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- tenants, keys, catalog

_counter = itertools.count(1)


@dataclass
class Tenant:
    organization: Any
    project: Any
    membership: Any


def tenant_create(slug: str | None = None, *, balance: str | None = "1000") -> Tenant:
    """An organization with a department > team > project chain and, unless ``balance`` is
    None, a prepaid balance (admission refuses requests an empty balance cannot cover)."""
    from billing.services import transfer_record
    from orgs import services
    from orgs.audit import Actor
    from orgs.models import Membership, Node

    n = next(_counter)
    slug = slug or f"org-{n}"
    actor = Actor.system()
    user = get_user_model().objects.create_user(username=f"owner-{slug}", password="x" * 12)
    org = services.organization_create(actor=actor, name=f"Org {n}", slug=slug, owner=user)
    node = Node.objects.get(organization=org, parent__isnull=True)
    membership = Membership.objects.get(user=user, node=node)
    for level in ("dept", "team", "proj"):
        node = services.node_create(
            actor=actor, parent=node, name=f"{level} {n}", slug=f"{level}-{n}"
        )
    if balance is not None:
        transfer_record(actor=actor, organization=org, amount=balance, reference=f"test-{slug}")
    return Tenant(organization=org, project=node, membership=membership)


def api_key_create(tenant: Tenant, **fields: Any) -> str:
    from orgs import services
    from orgs.audit import Actor

    created = services.api_key_create(
        actor=Actor.system(),
        project=tenant.project,
        membership=tenant.membership,
        name=f"key {next(_counter)}",
        **fields,
    )
    return created.raw_key


def api_key_revoke(tenant: Tenant, raw_key: str) -> None:
    from orgs import services
    from orgs.audit import Actor
    from orgs.models import ApiKey
    from orgs.secrets import GATEWAY_KEY, prefix_of

    prefix = prefix_of(raw_key, GATEWAY_KEY)
    key = ApiKey.objects.get(secrets__prefix=prefix)
    services.api_key_revoke(actor=Actor.system(), api_key=key)


# ---------------------------------------------------------------- catalog

PRICE_IN = Decimal("0.000002")  # $2 per million input tokens
PRICE_OUT = Decimal("0.000008")


def provider_create(slug: str, kind: str, base_url: str) -> Any:
    from routing.services import provider_upsert

    auth = {"anthropic": "x-api-key", "gemini": "x-goog-api-key", "bedrock": "sigv4"}.get(
        kind, "bearer"
    )
    provider, _ = provider_upsert(
        slug=slug, name=slug.title(), kind=kind, base_url=base_url, auth_style=auth
    )
    return provider


def model_create(
    provider: Any,
    name: str,
    *,
    mode: str = "chat",
    price_in: Decimal = PRICE_IN,
    price_out: Decimal = PRICE_OUT,
    quality_tier: int = 3,
    cached_in: Decimal | None = None,
    cache_write: Decimal | None = None,
    **capabilities: Any,
) -> Any:
    from routing.services import PriceInput
    from routing.services import model_create as create

    fields = {
        "mode": mode,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_schema": True,
        "quality_tier": quality_tier,
        **capabilities,
    }
    return create(
        provider=provider,
        provider_model_name=name,
        price=PriceInput(
            input_per_token=price_in,
            output_per_token=price_out,
            cached_input_per_token=cached_in,
            cache_write_per_token=cache_write,
        ),
        fields=fields,
    )


def credential_create(name: str = "sim") -> Any:
    from routing.crypto import CredentialSecret
    from routing.services import credential_upsert

    credential, _ = credential_upsert(
        name=name, kind="api_key", secret=CredentialSecret(api_key="sk-sim")
    )
    return credential


def deployment_create(
    model: Any,
    *,
    name: str,
    base_url: str,
    upstream_name: str | None = None,
    priority: int = 0,
    **fields: Any,
) -> Any:
    from routing.services import deployment_upsert

    deployment, _ = deployment_upsert(
        name=name,
        model=model,
        base_url=base_url,
        provider_model_name=upstream_name or model.provider_model_name,
        credential=fields.pop("credential", None),
        priority=priority,
        **fields,
    )
    return deployment
