"""A large organization for scale tests, written with bulk_create.

    manage.py seed_scale_org --members 10000 --teams 500 --projects 2000 --keys 20000

Layout: ``--departments`` departments (default teams/25, at least 1), teams spread evenly over
them, projects spread evenly over teams. Member 0 is the owner at the root, 1% of members are
admins at the root, the rest are developers on teams (round robin). Each key belongs to a
project and to a developer of that project's team. Prints JSON with ids and one working key.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from orgs import secrets
from orgs.audit import Actor, audit_event_record
from orgs.models import (
    ApiKey,
    ApiKeySecret,
    Membership,
    Node,
    NodeKind,
    NodeUserPermission,
    Organization,
    Role,
)
from orgs.roles import permissions_for

BATCH = 2000


class Command(BaseCommand):
    help = "Create a large organization (members, teams, projects, keys) for scale tests."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--slug", default="scale")
        parser.add_argument("--members", type=int, default=10_000)
        parser.add_argument("--departments", type=int, default=0)
        parser.add_argument("--teams", type=int, default=500)
        parser.add_argument("--projects", type=int, default=2_000)
        parser.add_argument("--keys", type=int, default=20_000)

    def handle(self, *args: Any, **o: Any) -> None:
        if o["members"] < 2 or o["teams"] < 1 or o["projects"] < 1 or o["keys"] < 1:
            raise CommandError("need at least 2 members, 1 team, 1 project and 1 key")
        if Organization.objects.filter(slug=o["slug"]).exists():
            raise CommandError(f"organization {o['slug']!r} already exists")
        started = time.perf_counter()
        result = self._seed(**o)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # fresh statistics for the planner
                for table in (
                    "orgs_node",
                    "orgs_membership",
                    "orgs_nodeuserpermission",
                    "orgs_apikey",
                    "orgs_apikeysecret",
                    "auth_user",
                ):
                    cursor.execute(f"ANALYZE {table}")
        result["seconds"] = round(time.perf_counter() - started, 2)
        self.stdout.write(json.dumps(result))

    @transaction.atomic
    def _seed(
        self,
        *,
        slug: str,
        members: int,
        departments: int,
        teams: int,
        projects: int,
        keys: int,
        **_: Any,
    ) -> dict[str, Any]:
        departments = departments or max(1, teams // 25)
        org = Organization.objects.create(name=f"Scale {slug}", slug=slug)
        root = Node.objects.create(
            organization=org, kind=NodeKind.ORGANIZATION, name=org.name, slug=slug, depth=0
        )
        root.path = f"/{root.pk}/"
        root.save(update_fields=["path"])
        depts = self._level(org, [root], NodeKind.DEPARTMENT, "dept", departments)
        team_nodes = self._level(org, depts, NodeKind.TEAM, "team", teams)
        project_nodes = self._level(org, team_nodes, NodeKind.PROJECT, "project", projects)

        users, memberships = self._members(org, root, team_nodes, slug, members)
        grants = self._grants(memberships)
        api_keys, raws = self._keys(org, memberships, project_nodes, keys)
        audit_event_record(
            organization=org,
            actor=Actor.system(),
            action="organization.seed_scale",
            target=org,
            changes={
                "members": members,
                "departments": departments,
                "teams": teams,
                "projects": projects,
                "keys": keys,
            },
        )
        sample = api_keys[0]
        return {
            "organization": org.slug,
            "organization_id": org.pk,
            "members": len(memberships),
            "departments": len(depts),
            "teams": len(team_nodes),
            "projects": len(project_nodes),
            "keys": len(api_keys),
            "grants": len(grants),
            "owner_username": users[0].get_username(),
            "developer_username": next(
                (m.user.get_username() for m in memberships if m.pk == sample.membership.pk), ""
            ),
            "sample_api_key": raws[0].raw,
            "sample_project": sample.project_id,
        }

    @staticmethod
    def _members(
        org: Organization, root: Node, teams: list[Node], slug: str, count: int
    ) -> tuple[list[Any], list[Membership]]:
        """``count`` users: an owner and 1 % admins at the root, developers spread over teams."""
        user_model = get_user_model()
        unusable = make_password(None)  # nobody logs in as a scale-test user
        users = user_model.objects.bulk_create(
            [
                user_model(
                    username=f"{slug}-user-{i}",
                    email=f"{slug}-user-{i}@example.com",
                    password=unusable,
                )
                for i in range(count)
            ],
            batch_size=BATCH,
        )
        admins = max(1, count // 100)
        rows = []
        for i, user in enumerate(users):
            if i == 0:
                rows.append(Membership(organization=org, user=user, node=root, role=Role.OWNER))
            elif i <= admins:
                rows.append(Membership(organization=org, user=user, node=root, role=Role.ADMIN))
            else:
                team = teams[(i - admins - 1) % len(teams)]
                rows.append(Membership(organization=org, user=user, node=team, role=Role.DEVELOPER))
        return users, Membership.objects.bulk_create(rows, batch_size=BATCH)

    @staticmethod
    def _grants(memberships: list[Membership]) -> list[NodeUserPermission]:
        node_type = ContentType.objects.get_for_model(Node)
        perms = {p.codename: p for p in Permission.objects.filter(content_type=node_type)}
        grants = [
            NodeUserPermission(user_id=m.user_id, permission=perms[code], content_object=m.node)
            for m in memberships
            for code in sorted(permissions_for(m.role))
        ]
        NodeUserPermission.objects.bulk_create(grants, batch_size=BATCH * 5)
        return grants

    @staticmethod
    def _keys(
        org: Organization, memberships: list[Membership], projects: list[Node], count: int
    ) -> tuple[list[ApiKey], list[secrets.NewSecret]]:
        """``count`` keys spread over the projects, each a developer's of the project's team."""
        developers_by_team: dict[int, list[Membership]] = {}
        for m in memberships:
            if m.role == Role.DEVELOPER:
                developers_by_team.setdefault(m.node_id, []).append(m)
        owner = memberships[0]
        api_keys = []
        raws: list[secrets.NewSecret] = []
        for i in range(count):
            project = projects[i % len(projects)]
            devs = developers_by_team.get(project.parent_id or 0) or [owner]
            new = secrets.new_secret(secrets.GATEWAY_KEY)
            raws.append(new)
            api_keys.append(
                ApiKey(
                    organization=org,
                    project=project,
                    membership=devs[i % len(devs)],
                    name=f"key-{i}",
                    prefix=new.prefix,
                )
            )
        api_keys = ApiKey.objects.bulk_create(api_keys, batch_size=BATCH)
        ApiKeySecret.objects.bulk_create(
            [
                ApiKeySecret(api_key=k, prefix=new.prefix, digest=new.digest)
                for k, new in zip(api_keys, raws, strict=True)
            ],
            batch_size=BATCH,
        )
        return api_keys, raws

    @staticmethod
    def _level(
        org: Organization, parents: list[Node], kind: str, label: str, count: int
    ) -> list[Node]:
        depth = parents[0].depth + 1
        nodes = Node.objects.bulk_create(
            [
                Node(
                    organization=org,
                    kind=kind,
                    parent=parents[i % len(parents)],
                    name=f"{label.title()} {i}",
                    slug=f"{label}-{i}",
                    depth=depth,
                )
                for i in range(count)
            ],
            batch_size=BATCH,
        )
        for node in nodes:
            assert node.parent is not None
            node.path = f"{node.parent.path}{node.pk}/"
        Node.objects.bulk_update(nodes, ["path"], batch_size=BATCH)
        return nodes
