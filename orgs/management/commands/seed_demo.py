"""Creates (idempotently) the demo tenant: an organization with a department, a team and a
project, an owner who can log in, and a gateway API key. ``--json`` prints what to use.

The admin password and the demo key's secret are kept in MEGAROUTER_DATA_DIR (mode 0600), so a
re-run prints the same key; if that key no longer works (revoked, or the file was lost), a new
one is created and saved, and the output says ``"api_key_rotated": true``.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from orgs import services
from orgs.audit import Actor
from orgs.keys import KeyRejected, default_resolver
from orgs.models import Membership, Node, Organization, Role

ORG_SLUG = "demo"
TREE = (("engineering", "Engineering"), ("platform", "Platform"), ("playground", "Playground"))


def _secret_file(path: Path, make: Any) -> str:
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _write_secret(path: Path, value: str) -> None:
    path.write_text(value + "\n")
    path.chmod(0o600)


class Command(BaseCommand):
    help = "Create the demo organization, owner and API key (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir = Path(settings.DATA_DIR)
        username = os.environ.get("MEGAROUTER_ADMIN_USERNAME", "admin")
        password = _secret_file(
            data_dir / "admin-password",
            lambda: os.environ.get("MEGAROUTER_ADMIN_PASSWORD") or pysecrets.token_urlsafe(12),
        )
        result = self._seed(username=username, password=password, data_dir=data_dir)
        port = os.environ.get("PORT", "8000")
        base = f"http://127.0.0.1:{port}"
        result.update(
            {
                "base_url": f"{base}/v1",
                "console": f"{base}/",
                "api_docs": f"{base}/api/docs/",
                "admin_username": username,
                "admin_password": password,
            }
        )
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            for name, value in result.items():
                self.stdout.write(f"{name}: {value}")

    @transaction.atomic
    def _seed(self, *, username: str, password: str, data_dir: Path) -> dict[str, Any]:
        actor = Actor.system()
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(
            username=username,
            defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.com"},
        )
        if not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        org = Organization.objects.filter(slug=ORG_SLUG).first()
        if org is None:
            org = services.organization_create(
                actor=actor, name="Demo Organization", slug=ORG_SLUG, owner=user
            )
        node = Node.objects.get(organization=org, parent__isnull=True)
        owner = Membership.objects.filter(
            user=user, node=node, removed_at__isnull=True, role=Role.OWNER
        ).first()
        if owner is None:
            owner = services.membership_create(actor=actor, node=node, user=user, role=Role.OWNER)
        for slug, name in TREE:
            child = Node.objects.filter(parent=node, slug=slug).first()
            if child is None:
                child = services.node_create(actor=actor, parent=node, name=name, slug=slug)
            node = child
        project = node

        key_file = data_dir / "demo-api-key"
        raw = key_file.read_text().strip() if key_file.exists() else ""
        previous = raw
        rotated = False
        try:
            default_resolver.forget()
            ctx = default_resolver.resolve_sync(raw)
            if ctx.organization_id != org.pk:
                raise KeyRejected("inactive", "the saved key belongs to another organization")
        except KeyRejected:
            created = services.api_key_create(
                actor=actor, project=project, membership=owner, name="demo key"
            )
            raw = created.raw_key
            _write_secret(key_file, raw)
            rotated = bool(previous)
        return {
            "api_key": raw,
            "api_key_rotated": rotated,
            "organization": org.slug,
            "project": project.pk,
        }
