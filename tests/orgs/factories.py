"""Factories for orgs tests: users via factory-boy, tenant trees via the real services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password

from orgs import services
from orgs.audit import Actor
from orgs.models import Membership, Node, Organization, Role

SYSTEM = Actor.system()


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    # unusable (no slow hashing); tests log in with force_login
    password = factory.LazyFunction(lambda: make_password(None))


@dataclass
class Tree:
    org: Organization
    root: Node
    dept: Node
    team: Node
    project: Node
    owner: Any
    owner_membership: Membership


def make_tree(slug: str = "acme") -> Tree:
    """An organization with one department > team > project and an owner at the root."""
    owner = UserFactory(username=f"{slug}-owner")
    org = services.organization_create(actor=SYSTEM, name=slug.title(), slug=slug, owner=owner)
    root = Node.objects.get(organization=org, parent__isnull=True)
    dept = services.node_create(actor=SYSTEM, parent=root, name="Engineering", slug="eng")
    team = services.node_create(actor=SYSTEM, parent=dept, name="Platform", slug="platform")
    project = services.node_create(actor=SYSTEM, parent=team, name="Gateway", slug="gateway")
    owner_membership = Membership.objects.get(user=owner, node=root)
    return Tree(org, root, dept, team, project, owner, owner_membership)


def add_member(node: Node, role: str = Role.DEVELOPER, user: Any = None) -> Membership:
    user = user or UserFactory()
    return services.membership_create(actor=SYSTEM, node=node, user=user, role=role)


def make_key(project: Node, membership: Membership, **fields: Any) -> services.CreatedKey:
    return services.api_key_create(
        actor=SYSTEM,
        project=project,
        membership=membership,
        name=fields.pop("name", "test key"),
        **fields,
    )
