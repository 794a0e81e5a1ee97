"""Console test data: tenants through the orgs services (via the orgs test factories), catalog
rows through the routing test factories."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync

from billing import services as billing_services
from billing.admission import AdmissionContext, HoldRequest, UsageEventData
from billing.admission.db import DatabaseBackend
from orgs import services
from orgs.models import Invitation, Membership, Node, Role
from routing.policies import routing_policy_set
from tests.orgs.factories import SYSTEM, Tree, UserFactory, add_member, make_key, make_tree
from tests.routing.factories import DeploymentFactory, ModelFactory, ProviderFactory

__all__ = [
    "SYSTEM",
    "DeploymentFactory",
    "ModelFactory",
    "ProviderFactory",
    "Tenant",
    "Tree",
    "UserFactory",
    "add_member",
    "make_key",
    "make_tenant",
    "make_tree",
    "spend",
]


@dataclass
class Tenant:
    """An organization with one of each role-holder and one of each kind of row."""

    tree: Tree
    other_dept: Any
    viewer: Any
    developer: Any
    developer_membership: Membership
    admin: Any
    owner_key: Any
    developer_key: Any
    invitation: Invitation
    budget: Any
    policy: Any


def make_tenant(slug: str = "acme") -> Tenant:
    tree = make_tree(slug)
    other_dept = services.node_create(
        actor=SYSTEM, parent=tree.root, name="Research", slug="research"
    )
    viewer = add_member(tree.root, Role.VIEWER, UserFactory(username=f"{slug}-viewer")).user
    developer_membership = add_member(
        tree.project, Role.DEVELOPER, UserFactory(username=f"{slug}-dev")
    )
    admin = add_member(tree.dept, Role.ADMIN, UserFactory(username=f"{slug}-admin")).user
    owner_key = make_key(tree.project, tree.owner_membership, name="owner key").api_key
    developer_key = make_key(tree.project, developer_membership, name="dev key").api_key
    invitation = services.invitation_create(
        actor=SYSTEM, node=tree.team, email=f"new@{slug}.example", role=Role.DEVELOPER
    ).invitation
    billing_services.transfer_record(
        actor=SYSTEM, organization=tree.org, amount="100.00", reference=f"wire-{slug}"
    )
    budget = billing_services.budget_create(
        actor=SYSTEM,
        organization=tree.org,
        scope="project",
        scope_id=tree.project.pk,
        period="monthly",
        limit_usd="10.00",
        thresholds=[50, 80, 100],
    )
    policy = routing_policy_set(actor=SYSTEM, node=tree.team, data={"strategy": "cost"})
    return Tenant(
        tree=tree,
        other_dept=other_dept,
        viewer=viewer,
        developer=developer_membership.user,
        developer_membership=developer_membership,
        admin=admin,
        owner_key=owner_key,
        developer_key=developer_key,
        invitation=invitation,
        budget=budget,
        policy=policy,
    )


def spend(
    project: Node,
    membership: Membership,
    key: Any,
    cost: str,
    *,
    model: str = "acme-ai/swift-1",
    tokens: tuple[int, int] = (100, 50),
    status: str = "ok",
    cache_lost: str | None = None,
) -> str:
    """One gateway request's money path without the gateway: admit and settle on the database
    admission backend, then post the usage event (what the Celery task does). Returns its id."""
    _root, department_id, team_id, project_id = project.ancestor_ids
    ctx = AdmissionContext(
        organization_id=project.organization_id,
        department_id=department_id,
        team_id=team_id,
        project_id=project_id,
        member_id=membership.pk,
        key_id=key.pk,
        time_zone=project.organization.time_zone,
    )
    backend = DatabaseBackend()
    request_id = uuid.uuid4().hex
    amount = Decimal(cost)
    reservation = async_to_sync(backend.reserve)(
        request_id, ctx, HoldRequest.fixed(amount, sum(tokens))
    )
    data = UsageEventData(
        model=model,
        requested_model=model,
        provider=model.split("/")[0],
        deployment=f"{model.split('/')[-1]}-sim",
        tokens_in=tokens[0],
        tokens_out=tokens[1],
        latency_ms=120,
        status=status,
        routing=(
            {"explain": {"prompt_cache": {"kept": False, "cache_lost_usd": cache_lost}}}
            if cache_lost
            else {}
        ),
    )
    async_to_sync(backend.settle)(reservation, amount, data)
    billing_services.usage_events_post()
    return request_id
