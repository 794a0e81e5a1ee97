"""First run of a production installation, without prompts: the first owner, the organization,
a management API token for the owner (printed once), and optionally a gateway API key and an
organization-wide budget.

    manage.py bootstrap --email owner@example.com --password-env OWNER_PASSWORD \\
        --org-name "Acme" [--org-slug acme] [--time-zone Europe/Paris] [--name "Ada Owner"] \\
        [--api-key "first key" [--project "Engineering/Platform/Gateway"]] \\
        [--budget-usd 500 [--budget-period monthly]] [--no-operator] [--json] [--exists-ok]

1. Refuse when the installation is already bootstrapped (an organization exists); with
   ``--exists-ok`` say so and exit 0 instead (for deploy scripts that run it every time).
2. Read the password from the environment variable named by ``--password-env`` (default
   ``MEGAROUTER_BOOTSTRAP_PASSWORD``) or from ``--password-file``, never from the command line.
3. In one transaction, through the services: ``orgs.services.user_create`` (the owner, a
   platform operator unless ``--no-operator``), ``organization_create`` (the owner at the
   root), ``access_token_create``, and with ``--api-key`` ``node_create`` for the project's
   department, team and project then ``api_key_create``, and with ``--budget-usd``
   ``billing.services.budget_create``. A refused field rolls everything back and exits 1
   naming the flag.

It lives in billing because the budget is billing's and billing sits above orgs in the layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from billing import services as billing_services
from billing.models import BudgetPeriod
from billing.money import plain_decimal, usd_text
from orgs import services
from orgs.audit import Actor
from orgs.errors import InvalidInput
from orgs.models import Node, Organization
from orgs.roles import CREATE_KEYS
from orgs.selectors import memberships_covering

PASSWORD_ENV = "MEGAROUTER_BOOTSTRAP_PASSWORD"  # noqa: S105 (the variable's name)
EMAIL_ENV = "MEGAROUTER_BOOTSTRAP_EMAIL"
DEFAULT_PROJECT = "Default/Default/Default"


class Refused(Exception):
    """Bad input: ``{flag: [messages]}``."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _flags(exc: InvalidInput, flags: dict[str, str]) -> Refused:
    """A service's field errors under the command's flag names."""
    out: dict[str, list[str]] = {}
    for name, messages in exc.errors.items():
        out.setdefault(flags.get(name, name), []).extend(messages)
    return Refused(out)


class Command(BaseCommand):
    help = (
        "First run: the first owner, the organization, a management API token (printed once), "
        "optionally a gateway API key and a budget. Refuses when already bootstrapped."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--email", help=f"the owner's email and login (or ${EMAIL_ENV})")
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            help=f"environment variable holding the owner's password (default {PASSWORD_ENV})",
        )
        parser.add_argument(
            "--password-file", metavar="PATH", help="file holding the owner's password"
        )
        parser.add_argument("--name", default="", help="the owner's name")
        parser.add_argument(
            "--no-operator",
            dest="operator",
            action="store_false",
            help="do not make the owner a platform operator (Django staff and superuser)",
        )
        parser.add_argument("--org-name", help="the organization's name (required)")
        parser.add_argument("--org-slug", help="the organization's slug (default: from its name)")
        parser.add_argument("--time-zone", default="UTC", help="IANA zone of budgets and reports")
        parser.add_argument(
            "--token-name", default="bootstrap", help="name of the management API token"
        )
        parser.add_argument(
            "--api-key", metavar="NAME", help="also create a gateway API key with this name"
        )
        parser.add_argument(
            "--project",
            default=DEFAULT_PROJECT,
            metavar="DEPARTMENT/TEAM/PROJECT",
            help=f"names of the key's department, team and project (default {DEFAULT_PROJECT})",
        )
        parser.add_argument(
            "--budget-usd", metavar="AMOUNT", help="also define an organization-wide budget"
        )
        parser.add_argument(
            "--budget-period", default=BudgetPeriod.MONTHLY, choices=BudgetPeriod.values
        )
        parser.add_argument(
            "--exists-ok",
            action="store_true",
            help="when already bootstrapped, say so and exit 0 instead of refusing",
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **opts: Any) -> None:
        existing = list(Organization.objects.order_by("id").values_list("slug", flat=True)[:3])
        if existing:
            message = (
                f"already bootstrapped: organization {', '.join(existing)} exists; nothing "
                "changed (people join by invitation, new organizations are made in the console)"
            )
            if not opts["exists_ok"]:
                raise CommandError(message)
            if opts["json"]:
                self.stdout.write(json.dumps({"bootstrapped": False, "detail": message}))
            else:
                self.stdout.write(message)
            return
        try:
            result = self._bootstrap(opts, self._password(opts))
        except Refused as exc:
            lines = [f"  {flag}: {' '.join(texts)}" for flag, texts in exc.errors.items()]
            raise CommandError("bootstrap refused, nothing changed:\n" + "\n".join(lines)) from None
        if opts["json"]:
            self.stdout.write(json.dumps(result, indent=1))
        else:
            self.stdout.write(_human(result))

    def _password(self, opts: dict[str, Any]) -> tuple[str, str]:
        """(password, the flag it came from)."""
        if opts["password_file"] and opts["password_env"]:
            raise Refused(
                {"--password-file": ["Give --password-file or --password-env, not both."]}
            )
        if opts["password_file"]:
            path = Path(opts["password_file"])
            try:
                return path.read_text().rstrip("\r\n"), "--password-file"
            except OSError as exc:
                raise Refused(
                    {"--password-file": [f"Cannot read {path}: {exc.strerror}."]}
                ) from None
        var = opts["password_env"] or PASSWORD_ENV
        if not os.environ.get(var):
            raise Refused(
                {"--password-env": [f"Environment variable {var} is not set (or empty)."]}
            )
        return os.environ[var], f"--password-env ({var})"

    @transaction.atomic
    def _bootstrap(self, opts: dict[str, Any], password: tuple[str, str]) -> dict[str, Any]:
        actor = Actor.system()
        email = opts["email"] or os.environ.get(EMAIL_ENV, "")
        errors: dict[str, list[str]] = {}
        if not email:
            errors["--email"] = [f"Required (or set {EMAIL_ENV})."]
        if not (opts["org_name"] or "").strip():
            errors["--org-name"] = ["Required."]
        api_key_path = [part.strip() for part in opts["project"].split("/")]
        if opts["api_key"] is not None and (len(api_key_path) != 3 or not all(api_key_path)):
            errors["--project"] = ["Give three names: department/team/project."]
        if errors:
            raise Refused(errors)
        try:
            owner = services.user_create(
                email=email, password=password[0], name=opts["name"], operator=opts["operator"]
            )
        except InvalidInput as exc:
            raise _flags(
                exc, {"email": "--email", "password": password[1], "name": "--name"}
            ) from None
        org_name = opts["org_name"].strip()
        slug = opts["org_slug"] or slugify(org_name)[:80]
        try:
            org = services.organization_create(
                actor=actor, name=org_name, slug=slug, owner=owner, time_zone=opts["time_zone"]
            )
        except InvalidInput as exc:
            raise _flags(
                exc, {"name": "--org-name", "slug": "--org-slug", "time_zone": "--time-zone"}
            ) from None
        try:
            token = services.access_token_create(user=owner, name=opts["token_name"])
        except InvalidInput as exc:
            raise _flags(exc, {"name": "--token-name"}) from None
        root = Node.objects.get(organization=org, parent__isnull=True)
        result: dict[str, Any] = {
            "bootstrapped": True,
            "owner": {"id": owner.pk, "email": owner.email, "operator": owner.is_superuser},
            "organization": {
                "id": org.pk,
                "name": org.name,
                "slug": org.slug,
                "time_zone": org.time_zone,
            },
            "console": f"{settings.MEGAROUTER_PUBLIC_URL}/",
            "management_api": f"{settings.MEGAROUTER_PUBLIC_URL}/api/",
            "access_token": token.raw_token,
            "api_key": None,
            "budget": None,
        }
        if opts["api_key"] is not None:
            result["api_key"] = self._api_key(actor, root, owner.pk, api_key_path, opts["api_key"])
        if opts["budget_usd"] is not None:
            try:
                budget = billing_services.budget_create(
                    actor=actor,
                    organization=org,
                    scope="organization",
                    period=opts["budget_period"],
                    limit_usd=opts["budget_usd"],
                    name=f"{org.name} {opts['budget_period']} budget",
                )
            except InvalidInput as exc:
                raise _flags(
                    exc, {"limit_usd": "--budget-usd", "period": "--budget-period"}
                ) from None
            result["budget"] = {
                "id": budget.pk,
                "limit_usd": plain_decimal(budget.limit_usd),
                "period": budget.period,
                "mode": budget.mode,
            }
        return result

    def _api_key(
        self, actor: Actor, root: Node, owner_id: int, names: list[str], key_name: str
    ) -> dict[str, Any]:
        node = root
        for name in names:
            try:
                node = services.node_create(
                    actor=actor, parent=node, name=name, slug=slugify(name)[:80] or "default"
                )
            except InvalidInput as exc:
                raise _flags(exc, {"name": "--project", "slug": "--project"}) from None
        owner_membership = memberships_covering(
            user_id=owner_id, node=node, perm=CREATE_KEYS
        ).first()
        try:
            created = services.api_key_create(
                actor=actor, project=node, name=key_name, membership=owner_membership
            )
        except InvalidInput as exc:
            raise _flags(exc, {"name": "--api-key"}) from None
        return {
            "id": created.api_key.pk,
            "name": created.api_key.name,
            "project": "/".join(names),
            "key": created.raw_key,
            "base_url": f"{settings.MEGAROUTER_PUBLIC_URL}/v1",
        }


def _human(result: dict[str, Any]) -> str:
    owner, org = result["owner"], result["organization"]
    lines = [
        "MegaRouter is bootstrapped.",
        f"  Owner:         {owner['email']}"
        + (" (platform operator)" if owner["operator"] else ""),
        f"  Organization:  {org['name']} ({org['slug']}), time zone {org['time_zone']}",
        f"  Console:       {result['console']} (log in with {owner['email']})",
        "  Management API token (shown once, keep it now; Authorization: Token ...):",
        f"    {result['access_token']}",
    ]
    key = result["api_key"]
    if key:
        lines += [
            f"  Gateway API key {key['name']!r} in {key['project']} (shown once):",
            f"    {key['key']}",
            f"  Gateway base URL: {key['base_url']}",
        ]
    budget = result["budget"]
    if budget:
        lines.append(
            f"  Budget:        {usd_text(budget['limit_usd'])} {budget['period']}, "
            f"organization-wide ({budget['mode']})"
        )
    return "\n".join(lines)
