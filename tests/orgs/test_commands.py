from __future__ import annotations

import io
import json
import stat

import pytest
from django.core.management import CommandError, call_command

from orgs import services
from orgs.keys import key_context_for_sync
from orgs.models import ApiKey, Membership, Node, NodeUserPermission, Organization
from tests.orgs.factories import SYSTEM

pytestmark = pytest.mark.django_db


def _run(*args, **kwargs):
    out = io.StringIO()
    call_command(*args, stdout=out, **kwargs)
    return json.loads(out.getvalue())


def test_seed_demo_is_idempotent_and_keeps_the_same_key(settings, tmp_path, monkeypatch):
    settings.DATA_DIR = tmp_path
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.delenv("MEGAROUTER_ADMIN_PASSWORD", raising=False)
    first = _run("seed_demo", json=True)
    second = _run("seed_demo", json=True)
    assert first == second
    assert set(first) == {
        "api_key",
        "api_key_rotated",
        "organization",
        "project",
        "base_url",
        "console",
        "api_docs",
        "admin_username",
        "admin_password",
    }
    assert first["base_url"] == "http://127.0.0.1:8123/v1"
    assert first["console"] == "http://127.0.0.1:8123/"
    assert first["api_docs"] == "http://127.0.0.1:8123/api/docs/"
    assert first["organization"] == "demo" and first["api_key_rotated"] is False
    assert Organization.objects.count() == 1
    assert Node.objects.count() == 4 and ApiKey.objects.count() == 1
    ctx = key_context_for_sync(first["api_key"])
    project = Node.objects.get(slug="playground")
    assert (ctx.project_id, ctx.team_id) == (project.pk, project.parent_id)
    admin = Membership.objects.get()
    assert (admin.user.username, admin.role, admin.user.is_superuser) == ("admin", "owner", True)
    assert admin.user.check_password(first["admin_password"])
    for name in ("demo-api-key", "admin-password"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert (tmp_path / "demo-api-key").read_text().strip() == first["api_key"]


def test_seed_demo_replaces_a_key_that_stopped_working(
    settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.DATA_DIR = tmp_path
    first = _run("seed_demo", json=True)
    with django_capture_on_commit_callbacks(execute=True):
        services.api_key_revoke(actor=SYSTEM, api_key=ApiKey.objects.get())
    again = _run("seed_demo", json=True)
    assert again["api_key"] != first["api_key"] and again["api_key_rotated"] is True
    assert key_context_for_sync(again["api_key"]).organization_id == Organization.objects.get().pk
    assert ApiKey.objects.count() == 2


def test_seed_scale_org_small():
    result = _run(
        "seed_scale_org", members=120, teams=10, projects=30, keys=90, departments=3, slug="s"
    )
    org = Organization.objects.get(slug="s")
    assert {k: result[k] for k in ("members", "departments", "teams", "projects", "keys")} == {
        "members": 120,
        "departments": 3,
        "teams": 10,
        "projects": 30,
        "keys": 90,
    }
    assert Node.objects.filter(organization=org).count() == 1 + 3 + 10 + 30
    assert ApiKey.objects.filter(organization=org).count() == 90
    # 1 owner + 1 admin (1%) with 12 grants each, 118 developers with 4 grants each
    assert NodeUserPermission.objects.count() == result["grants"] == 2 * 12 + 118 * 4
    for node in Node.objects.filter(organization=org).select_related("parent"):
        expected = f"{node.parent.path}{node.pk}/" if node.parent else f"/{node.pk}/"
        assert node.path == expected
    ctx = key_context_for_sync(result["sample_api_key"])
    key = ApiKey.objects.select_related("membership__node", "project").get(pk=ctx.key_id)
    assert key.project_id == result["sample_project"]
    assert key.membership.node_id == key.project.parent_id  # a developer of that team
    with pytest.raises(CommandError):
        call_command("seed_scale_org", slug="s", stdout=io.StringIO())
