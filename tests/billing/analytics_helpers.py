"""Helpers for analytics and report tests: a reference model in the catalog, two tenants with
two teams each, and usage records with known values."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from decimal import Decimal

from billing.models import UsageRecord
from orgs.audit import Actor
from orgs.models import Membership, Node, Role
from orgs.services import node_create
from routing.models import ModelPrice
from tests.billing.factories import World, make_world
from tests.orgs.factories import add_member, make_key
from tests.routing.factories import ModelFactory, ProviderFactory

D = Decimal
UTC = dt.UTC
SYSTEM = Actor.system()
REF_IN = D("0.0000025")
REF_OUT = D("0.00001")
REF_CACHED = D("0.00000125")
_ids = itertools.count(1)


def reference_catalog() -> None:
    """openai/gpt-4o at $2.50 / $10 per million tokens ($1.25 cached) from 2026-01-01."""
    model = ModelFactory(
        provider=ProviderFactory(slug="openai"), provider_model_name="gpt-4o", price=False
    )
    ModelPrice.objects.create(
        model=model,
        effective_from=dt.datetime(2026, 1, 1, tzinfo=UTC),
        input_per_token=REF_IN,
        output_per_token=REF_OUT,
        cached_input_per_token=REF_CACHED,
        source="test",
    )


@dataclass
class Tenant:
    world: World
    team2: Node
    project2: Node
    member2_id: int
    key2_id: int

    @property
    def org(self):
        return self.world.org

    @property
    def tree(self):
        return self.world.tree


def make_tenant(slug: str) -> Tenant:
    world = make_world(slug, balance="100")
    team2 = node_create(actor=SYSTEM, parent=world.tree.dept, name="Research", slug="research")
    project2 = node_create(actor=SYSTEM, parent=team2, name="Lab", slug="lab")
    dev2 = add_member(project2, Role.DEVELOPER)
    key2 = make_key(project2, dev2, name="lab key")
    return Tenant(world, team2, project2, dev2.pk, key2.api_key.pk)


def record(
    tenant: Tenant,
    *,
    at: dt.datetime,
    second: bool = False,
    model: str = "openai/gpt-4o-mini",
    provider: str = "openai",
    tokens_in: int = 1000,
    tokens_out: int = 500,
    tokens_cached: int = 0,
    cost: str = "0.000450",
    status: str = "ok",
    strategy: str = "balanced",
    latency_ms: int | None = 200,
    ttft_ms: int | None = 80,
    fallback_used: bool = False,
    cache_lost: str = "0",
) -> UsageRecord:
    t = tenant.tree
    return UsageRecord.objects.create(
        request_id=f"req-{next(_ids)}",
        organization=tenant.org,
        department_id=t.dept.pk,
        team_id=(tenant.team2 if second else t.team).pk,
        project_id=(tenant.project2 if second else t.project).pk,
        member_id=tenant.member2_id if second else tenant.world.member_id,
        key_id=tenant.key2_id if second else tenant.world.key_id,
        requested_model=model,
        model=model,
        provider=provider,
        strategy=strategy,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        tokens_cached=tokens_cached,
        cost=D(cost),
        cache_lost=D(cache_lost),
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        status=status,
        attempts=2 if fallback_used else 1,
        fallback_used=fallback_used,
        created_at=at,
    )


def team_lead(tenant: Tenant, *, second: bool = False) -> Membership:
    """A viewer on one team (view_billing on that subtree only)."""
    return add_member(tenant.team2 if second else tenant.tree.team, Role.VIEWER)
