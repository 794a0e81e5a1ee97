"""Tenants, keys and a small catalog for gateway tests, built through the orgs and routing
services (the real code paths, no fakes)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model

_counter = itertools.count(1)


@dataclass
class Tenant:
    organization: Any
    project: Any
    membership: Any


def tenant_create(slug: str | None = None) -> Tenant:
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
        price=PriceInput(input_per_token=price_in, output_per_token=price_out),
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
