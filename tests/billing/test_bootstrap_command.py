"""``manage.py bootstrap``: the first owner, organization, management token, gateway key and
budget of a production installation, through the services; refusals change nothing."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from billing.models import Budget
from orgs.keys import key_context_for_sync
from orgs.models import ApiKey, AuditEvent, Membership, Node, Organization, PersonalAccessToken
from tests.orgs.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _password(monkeypatch):
    monkeypatch.setenv("MEGAROUTER_BOOTSTRAP_PASSWORD", PASSWORD)
    monkeypatch.delenv("MEGAROUTER_BOOTSTRAP_EMAIL", raising=False)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("bootstrap", *args, stdout=out)
    return out.getvalue()


def counts() -> dict[str, int]:
    return {
        "users": get_user_model().objects.count(),
        "orgs": Organization.objects.count(),
        "tokens": PersonalAccessToken.objects.count(),
        "keys": ApiKey.objects.count(),
        "budgets": Budget.objects.count(),
        "audit": AuditEvent.objects.count(),
    }


def test_bootstrap_creates_everything_once_and_it_works(settings):
    settings.MEGAROUTER_PUBLIC_URL = "https://gw.example.com"
    result = json.loads(
        run(
            "--email",
            "Ada@Example.com",
            "--name",
            "Ada",
            "--org-name",
            "Acme Corp",
            "--time-zone",
            "Europe/Paris",
            "--api-key",
            "first key",
            "--project",
            "Engineering/Platform/Gateway",
            "--budget-usd",
            "500",
            "--json",
        )
    )
    owner = get_user_model().objects.get(email=result["owner"]["email"])
    org = Organization.objects.get()
    project = Node.objects.get(kind="project")
    key = ApiKey.objects.get()
    budget = Budget.objects.get()
    assert result == {
        "bootstrapped": True,
        "owner": {"id": owner.pk, "email": "ada@example.com", "operator": True},
        "organization": {
            "id": org.pk,
            "name": "Acme Corp",
            "slug": "acme-corp",
            "time_zone": "Europe/Paris",
        },
        "console": "https://gw.example.com/",
        "management_api": "https://gw.example.com/api/",
        "access_token": result["access_token"],
        "api_key": {
            "id": key.pk,
            "name": "first key",
            "project": "Engineering/Platform/Gateway",
            "key": result["api_key"]["key"],
            "base_url": "https://gw.example.com/v1",
        },
        "budget": {"id": budget.pk, "limit_usd": "500", "period": "monthly", "mode": "block"},
    }
    assert (owner.username, owner.first_name, owner.is_staff, owner.is_superuser) == (
        "ada@example.com",
        "Ada",
        True,
        True,
    )
    assert owner.check_password(PASSWORD)
    root = Membership.objects.get()
    assert (root.user_id, root.node.parent_id, root.role) == (owner.pk, None, "owner")
    assert [n.name for n in Node.objects.order_by("depth")] == [
        "Acme Corp",
        "Engineering",
        "Platform",
        "Gateway",
    ]
    # the token reaches the management API as the owner
    api = APIClient()
    r = api.get("/api/orgs/", HTTP_AUTHORIZATION=f"Token {result['access_token']}")
    assert r.status_code == 200
    assert [o["slug"] for o in r.json()["results"]] == ["acme-corp"]
    # the key admits to the gateway for the project, owned by the owner's membership
    ctx = key_context_for_sync(result["api_key"]["key"])
    assert (ctx.organization_id, ctx.project_id, key.membership_id) == (
        org.pk,
        project.pk,
        root.pk,
    )
    assert (budget.scope, budget.scope_id, budget.limit_usd, budget.period) == (
        "organization",
        root.node_id,
        Decimal("500"),
        "monthly",
    )
    assert list(AuditEvent.objects.order_by("id").values_list("action", flat=True)) == [
        "organization.create",
        "membership.create",
        "node.create",
        "node.create",
        "node.create",
        "api_key.create",
        "budget.create",
    ]

    # a second run refuses and changes nothing, unless told that is fine
    before = counts()
    with pytest.raises(CommandError, match=r"^already bootstrapped: organization acme-corp"):
        run("--email", "other@example.com", "--org-name", "Other")
    out = run("--email", "other@example.com", "--org-name", "Other", "--exists-ok", "--json")
    assert json.loads(out)["bootstrapped"] is False
    assert counts() == before


def test_the_human_output_shows_the_secrets_once(tmp_path, monkeypatch):
    monkeypatch.delenv("MEGAROUTER_BOOTSTRAP_PASSWORD")
    secret = tmp_path / "owner-password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("MEGAROUTER_BOOTSTRAP_EMAIL", "ops@example.com")
    out = run("--password-file", str(secret), "--org-name", "Solo", "--no-operator")
    owner = get_user_model().objects.get(email="ops@example.com")
    assert owner.check_password(PASSWORD)  # the file's trailing newline is not the password
    assert (owner.email, owner.is_staff, owner.is_superuser) == ("ops@example.com", False, False)
    (token,) = [w for w in out.split() if w.startswith("mrp_")]
    assert out.count(token) == 1
    assert out.splitlines()[:3] == [
        "MegaRouter is bootstrapped.",
        "  Owner:         ops@example.com",
        "  Organization:  Solo (solo), time zone UTC",
    ]
    assert "mrk_" not in out and "Budget" not in out
    assert ApiKey.objects.count() == 0 and Budget.objects.count() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "not-an-email", "--org-name", "A"],
         "  --email: Enter a valid email address (at most 150 characters)."),
        (["--email", "a@example.com", "--org-name", "A", "--password-env", "WEAK_PW"],
         "  --password-env (WEAK_PW): This password is too short. It must contain at least 8 "
         "characters. This password is too common. This password is entirely numeric."),
        (["--email", "a@example.com", "--org-name", "A", "--password-env", "UNSET_PW"],
         "  --password-env: Environment variable UNSET_PW is not set (or empty)."),
        (["--email", "a@example.com", "--org-name", "A", "--password-file", "/nonexistent/pw"],
         "  --password-file: Cannot read /nonexistent/pw: No such file or directory."),
        (["--email", "a@example.com", "--org-name", "A", "--budget-usd", "-5"],
         "  --budget-usd: Must be zero or more."),
        (["--email", "a@example.com", "--org-name", "A", "--budget-usd", "lots"],
         '  --budget-usd: Give the limit as a decimal string, e.g. "100.00".'),
        (["--email", "a@example.com", "--org-name", "A", "--time-zone", "Mars/Olympus"],
         "  --time-zone: Unknown time zone 'Mars/Olympus'."),
        (["--email", "a@example.com", "--org-name", "A", "--org-slug", "no spaces"],
         "  --org-slug: Enter 1 to 80 letters, numbers, underscores or hyphens."),
        (["--email", "a@example.com", "--org-name", "A", "--api-key", "k", "--project", "a/b"],
         "  --project: Give three names: department/team/project."),
        (["--org-name", " "],
         "  --email: Required (or set MEGAROUTER_BOOTSTRAP_EMAIL).\n  --org-name: Required."),
    ],
)  # fmt: skip
def test_bad_input_names_the_flag_and_changes_nothing(monkeypatch, args, message):
    monkeypatch.setenv("WEAK_PW", "1234")
    monkeypatch.delenv("UNSET_PW", raising=False)
    before = counts()
    with pytest.raises(CommandError) as exc:
        run(*args)
    assert str(exc.value) == f"bootstrap refused, nothing changed:\n{message}"
    assert counts() == before


def test_an_existing_account_is_refused_and_left_alone():
    existing = UserFactory(username="ada", email="ada@example.com")
    existing.set_password("her own passphrase")
    existing.save()
    before = counts()
    with pytest.raises(CommandError) as exc:
        run("--email", "ADA@example.com", "--org-name", "Acme")
    assert str(exc.value) == (
        "bootstrap refused, nothing changed:\n"
        "  --email: An account with this email address already exists."
    )
    assert counts() == before
    existing.refresh_from_db()
    assert existing.check_password("her own passphrase") and not existing.is_superuser
