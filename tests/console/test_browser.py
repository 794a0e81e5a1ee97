"""A new admin walks through the console in headless Chromium (Debian's, through Playwright):
log in with the seed_demo admin, create a team and a project, invite a member, create a key and
copy it, look at every page; the invited member accepts and lands in the organization.

Screenshots of every page go to tests/artifacts/console/ (gitignored) for people to look at.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connections

from orgs.keys import default_resolver
from orgs.models import ApiKey, Invitation, Membership, Node
from tests.console.factories import DeploymentFactory, ModelFactory, ProviderFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "console"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            # While Playwright's loop runs in this thread, Django's connection handler (an
            # asgiref Local) hands the test's code its own connection: close it, or the test
            # database cannot be dropped at the end of the session.
            connections.close_all()


class Walk:
    """One browser page plus numbered full-page screenshots."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.n = 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def go(self, path: str) -> None:
        self.page.goto(self.base + path)

    def shot(self, name: str, *, full_page: bool = True) -> None:
        self.n += 1
        path = ARTIFACTS / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)

    def nav(self, name: str) -> None:
        """Follow a link of the sidebar."""
        nav = self.page.get_by_role("navigation", name="Console")
        nav.get_by_role("link", name=name, exact=True).click()

    def flash(self) -> str:
        return self.page.locator(".messages li").first.inner_text()


def seed_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> dict[str, Any]:
    settings.DATA_DIR = tmp_path
    monkeypatch.setenv("MEGAROUTER_ADMIN_PASSWORD", "correct horse battery")
    out = io.StringIO()
    call_command("seed_demo", json=True, stdout=out)
    return json.loads(out.getvalue())


def test_new_admin_walkthrough(browser, live_server, tmp_path, monkeypatch, settings):
    demo = seed_demo(tmp_path, monkeypatch, settings)
    acme = ProviderFactory(slug="acme-ai", name="Acme AI")
    chat = ModelFactory(provider=acme, provider_model_name="swift-1", supports_tools=True)
    ModelFactory(provider=acme, provider_model_name="embed-1", mode="embedding")
    ModelFactory(provider=ProviderFactory(slug="zeta", name="Zeta"), provider_model_name="z-large")
    DeploymentFactory(name="swift-1-eu", model=chat, region="eu-west-1", priority=0)

    context = browser.new_context(viewport={"width": 1360, "height": 860})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = context.new_page()
    page.set_default_timeout(5000)
    page.on("dialog", lambda dialog: dialog.accept())
    w = Walk(page, live_server.url)

    # -- log in with the seed_demo admin -------------------------------------------------
    w.go("/")
    assert page.url == f"{live_server.url}/login/?next=/"
    page.get_by_label("Username").fill(demo["admin_username"])
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    assert (
        "Please enter a correct username and password" in page.locator(".form-errors").inner_text()
    )
    w.shot("login-error")
    page.get_by_label("Password").fill(demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/o/demo/")
    assert page.locator("h1").inner_text() == "Demo Organization"
    w.shot("overview")

    # -- create a team and a project -----------------------------------------------------
    w.nav("Organization tree")
    page.get_by_label("Parent").select_option(label="Engineering (department)")
    page.get_by_label("Name").fill("Data Science")
    # the slug follows the name (console.js)
    assert page.get_by_label("Slug").input_value() == "data-science"
    page.get_by_role("button", name="Create").click()
    assert w.flash() == "Team Data Science created in Engineering."
    team = Node.objects.get(slug="data-science")
    assert (team.kind, team.parent.slug) == ("team", "engineering")
    page.get_by_label("Parent").select_option(label="\u2003Data Science (team)")
    page.get_by_label("Name").fill("Forecasting")
    page.get_by_role("button", name="Create").click()
    assert w.flash() == "Project Forecasting created in Data Science."
    project = Node.objects.get(slug="forecasting")
    assert (project.kind, project.parent_id) == ("project", team.pk)
    # a duplicate slug is a field error, and nothing is created
    page.get_by_label("Parent").select_option(label="\u2003Data Science (team)")
    page.get_by_label("Name").fill("Forecasting")
    page.get_by_role("button", name="Create").click()
    assert "A sibling with this slug already exists." in page.locator(".field .errors").inner_text()
    assert Node.objects.filter(slug="forecasting").count() == 1
    w.shot("tree-field-error")
    page.get_by_role("link", name="Forecasting").click()
    w.shot("project")

    # -- invite a member -----------------------------------------------------------------
    w.nav("Members")
    w.shot("members")
    page.get_by_role("link", name="Invitations").click()
    page.get_by_label("Email").fill("dana@example.com")
    page.get_by_label("Place").select_option(label="\u2003\u2003Forecasting (project)")
    page.get_by_label("Role").select_option("developer")
    page.get_by_role("button", name="Send invitation").click()
    assert w.flash() == "Invitation sent to dana@example.com for Forecasting."
    assert page.locator("tbody tr").first.locator(".badge.pending").inner_text() == "Pending"
    assert len(mail.outbox) == 1
    token = re.search(r"mri_[\w-]+", mail.outbox[0].body).group(0)
    w.shot("invitations")

    # -- create a key and copy it ---------------------------------------------------------
    w.nav("API keys")
    page.get_by_role("link", name="New API key").first.click()
    page.get_by_label("Project").select_option(label="\u2003\u2003Forecasting (project)")
    page.get_by_label("Name").fill("forecast service")
    page.get_by_label("Allowed models").fill("acme-ai/*")
    page.get_by_label("Requests per minute").fill("60")
    w.shot("key-new")
    page.get_by_role("button", name="Create key").click()
    raw = page.locator("#raw-key").input_value()
    assert raw.startswith("mrk_")
    page.get_by_role("button", name="Copy").click()
    page.locator("[data-copied=true]").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == raw
    w.shot("key-secret")
    ctx = default_resolver.resolve_sync(raw)
    key = ApiKey.objects.get(name="forecast service")
    assert (ctx.project_id, key.rpm_limit, key.allowed_models) == (project.pk, 60, ["acme-ai/*"])
    page.get_by_role("link", name="Done: open the key").click()
    assert raw not in page.content()  # shown once: never again
    w.shot("key")
    w.nav("API keys")
    w.shot("keys")

    # -- the rest of the pages -------------------------------------------------------------
    w.nav("Models")
    assert page.locator("tbody tr").count() == 3
    page.get_by_label("Provider").select_option("acme-ai")  # submits by itself
    page.wait_for_url(re.compile(r"provider=acme-ai"))
    page.get_by_label("Tools").check()
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("td").nth(3).inner_text() == "1"  # $ per million input tokens
    w.shot("models")
    rows.first.locator("a").first.click()
    w.shot("model")
    w.nav("Deployments")
    assert "swift-1-eu" in page.locator("tbody").inner_text()
    w.shot("deployments")
    w.nav("Audit log")
    assert page.locator("tbody tr").first.locator("code").inner_text() == "api_key.create"
    w.shot("audit")
    w.nav("Settings")
    w.shot("settings")
    page.locator(".switcher summary").click()  # the organization switcher
    page.get_by_role("link", name="All organizations…").click()
    w.shot("org-list")

    # a narrow screen: the sidebar is a drawer behind the menu button
    page.set_viewport_size({"width": 390, "height": 800})
    w.go("/o/demo/")
    page.get_by_role("button", name="Menu").click()
    page.wait_for_function(
        "getComputedStyle(document.getElementById('sidebar')).transform === 'none'"
    )
    assert page.get_by_role("button", name="Menu").get_attribute("aria-expanded") == "true"
    w.shot("mobile-menu", full_page=False)
    page.keyboard.press("Escape")
    page.set_viewport_size({"width": 1360, "height": 860})
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{live_server.url}/login/")

    # -- the invited member accepts --------------------------------------------------------
    dana = UserFactory(username="dana", email="dana@example.com")
    dana.set_password("dana's long password")
    dana.save()
    page.get_by_label("Username").fill("dana")
    page.get_by_label("Password").fill("dana's long password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/orgs/")
    page.get_by_role("link", name="Accept an invitation").click()
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Join").click()
    page.wait_for_url(f"{live_server.url}/o/demo/")
    assert w.flash() == "Welcome to Demo Organization: you are developer of Forecasting."
    membership = Membership.objects.get(user=dana, removed_at__isnull=True)
    assert (membership.node_id, membership.role) == (project.pk, "developer")
    assert Invitation.objects.get(email="dana@example.com").accepted_at is not None
    w.shot("member-overview")
    context.close()
