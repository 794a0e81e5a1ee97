"""Factories for billing tests: funded tenant trees, admission contexts, prices."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from billing import services
from billing.admission import AdmissionContext
from orgs.audit import Actor
from orgs.models import Role
from tests.orgs.factories import Tree, add_member, make_key, make_tree

SYSTEM = Actor.system()
D = Decimal


@dataclass(frozen=True)
class Price:
    """A stand-in for a catalog price version (same fields)."""

    input_per_token: Decimal
    output_per_token: Decimal
    cached_input_per_token: Decimal | None = None
    cache_write_per_token: Decimal | None = None
    reasoning_per_token: Decimal | None = None


@dataclass
class World:
    tree: Tree
    member_id: int
    key_id: int
    raw_key: str

    @property
    def org(self):
        return self.tree.org

    def ctx(self, **overrides) -> AdmissionContext:
        t = self.tree
        values = {
            "organization_id": t.org.pk,
            "department_id": t.dept.pk,
            "team_id": t.team.pk,
            "project_id": t.project.pk,
            "member_id": self.member_id,
            "key_id": self.key_id,
            "time_zone": t.org.time_zone,
        }
        values.update(overrides)
        return AdmissionContext(**values)


def make_world(slug: str = "acme", *, balance: str | None = "100.00") -> World:
    tree = make_tree(slug)
    dev = add_member(tree.project, Role.DEVELOPER)
    created = make_key(tree.project, dev)
    if balance is not None:
        services.transfer_record(
            actor=SYSTEM, organization=tree.org, amount=balance, reference=f"wire-{slug}"
        )
    return World(tree=tree, member_id=dev.pk, key_id=created.api_key.pk, raw_key=created.raw_key)


def budget(world: World, scope: str, limit: str, *, period: str = "monthly", **kw):
    scope_ids = {
        "organization": None,
        "department": world.tree.dept.pk,
        "team": world.tree.team.pk,
        "project": world.tree.project.pk,
        "member": world.member_id,
        "key": world.key_id,
        "tag": None,
    }
    return services.budget_create(
        actor=SYSTEM,
        organization=world.org,
        scope=scope,
        scope_id=scope_ids[scope],
        period=period,
        limit_usd=limit,
        **kw,
    )
