"""The ``[[policies]]`` section of the operator file (``manage.py apply_config``).

    [[policies]]
    organization = "acme"          # the organization's slug
    node = "eng/platform"          # slugs below the root; omit for the organization itself
    strategy = "cost"
    allowed_providers = ["openai", "anthropic"]
    zero_data_retention_only = true
    max_price_per_million = "15"
    quality_floor = 2

Every other field of a policy document (``orgs.policy.PolicySpec``; docs/routing.md,
"Policies") may appear, as at every other level. The file's
policy replaces the node's policy as a whole; a second run with the same file changes nothing.
Validated with the catalog sections before any write, applied in the same transaction, last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orgs.audit import Actor
from orgs.models import Node, Organization
from routing.operator_config import Context, Section, register_section
from routing.policies import PolicyError, PolicySpec, routing_policy_set
from routing.policy_models import RoutingPolicy


@dataclass(frozen=True)
class PolicyPlan:
    node_id: int
    label: str
    document: dict[str, Any]
    spec: PolicySpec


def _node(org: Organization, path: str) -> Node | None:
    node = Node.objects.filter(organization=org, parent__isnull=True).first()
    for slug in [p for p in path.split("/") if p]:
        if node is None:
            return None
        node = Node.objects.filter(parent=node, slug=slug).first()
    return node


def _validate(items: list[dict[str, Any]], ctx: Context) -> list[PolicyPlan]:
    plans: list[PolicyPlan] = []
    seen: set[int] = set()
    for i, item in enumerate(items):
        path = f"policies[{i}]"
        if not isinstance(item, dict):
            ctx.error(path, "expected a table")
            continue
        document = {k: v for k, v in item.items() if k not in ("organization", "node")}
        slug = item.get("organization")
        node_path = item.get("node", "")
        if not isinstance(slug, str) or not slug:
            ctx.error(f"{path}.organization", "is required (an organization slug)")
            continue
        if not isinstance(node_path, str):
            ctx.error(f"{path}.node", "expected a path of slugs such as 'eng/platform'")
            continue
        org = Organization.objects.filter(slug=slug).first()
        if org is None:
            ctx.error(f"{path}.organization", f"no organization {slug!r}")
            continue
        node = _node(org, node_path)
        if node is None:
            ctx.error(f"{path}.node", f"no node {node_path!r} in {slug!r}")
            continue
        if node.pk in seen:
            ctx.error(path, f"a second policy for {slug}/{node_path}")
            continue
        seen.add(node.pk)
        try:
            spec = PolicySpec.from_document(document)
        except PolicyError as error:
            for name, message in error.errors.items():
                ctx.error(f"{path}.{name}", message)
            continue
        label = f"{slug}/{node_path}" if node_path else slug
        plans.append(PolicyPlan(node.pk, label, document, spec))
    return plans


def _apply(plans: list[PolicyPlan], ctx: Context) -> None:
    actor = Actor.system()
    existing = {
        p.node_id: p for p in RoutingPolicy.objects.filter(node_id__in=[x.node_id for x in plans])
    }
    for plan in plans:
        current = existing.get(plan.node_id)
        before = dict(current.document) if current is not None else None
        if before == plan.spec.to_document():
            continue
        routing_policy_set(actor=actor, node=Node.objects.get(pk=plan.node_id), data=plan.document)
        ctx.changes.append(f"policy {plan.label}: {'created' if before is None else 'updated'}")


register_section(Section("policies", 60, _validate, _apply, doc=__doc__ or ""))
