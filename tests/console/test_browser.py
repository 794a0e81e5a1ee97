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
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connections

from billing.alerts import budget_alerts_evaluate
from billing.models import Budget
from orgs.keys import default_resolver
from orgs.models import ApiKey, Invitation, Membership, Node
from tests.console.factories import (
    DeploymentFactory,
    ModelFactory,
    ProviderFactory,
    UserFactory,
    spend,
)

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
        for old in ARTIFACTS.glob("*.png"):  # a shorter walk must not leave stale pictures
            old.unlink()

    def go(self, path: str) -> None:
        self.page.goto(self.base + path)

    def shot(self, name: str, *, full_page: bool = True) -> None:
        self.n += 1
        path = ARTIFACTS / f"{self.n:02d}-{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")  # sticky bars stay at the top of the shot
        self.page.screenshot(path=str(path), full_page=full_page)

    def navigate(self, target: Any) -> None:
        """Click ``target`` and wait for the next page (so no check reads the old one)."""
        with self.page.expect_navigation():
            target.click()

    def nav(self, name: str) -> None:
        """Follow a link of the sidebar."""
        nav = self.page.get_by_role("navigation", name="Console")
        self.navigate(nav.get_by_role("link", name=name, exact=True))

    def flash(self) -> str:
        return self.page.locator(".messages li").first.inner_text()


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in another thread: async_to_sync refuses to run in this one while
    Playwright's event loop runs here."""

    def job() -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(job).result()


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
    w.navigate(page.get_by_role("button", name="Log in"))
    assert (
        "Please enter a correct username and password" in page.locator(".form-errors").inner_text()
    )
    w.shot("login-error")
    page.get_by_label("Password").fill(demo["admin_password"])
    w.navigate(page.get_by_role("button", name="Log in"))
    page.wait_for_url(f"{live_server.url}/o/demo/")
    assert page.locator("h1").inner_text() == "Demo Organization"
    w.shot("overview")

    # -- create a team and a project -----------------------------------------------------
    w.nav("Organization tree")
    page.get_by_label("Parent").select_option(label="Engineering (department)")
    page.get_by_label("Name").fill("Data Science")
    # the slug follows the name (console.js)
    assert page.get_by_label("Slug").input_value() == "data-science"
    w.navigate(page.get_by_role("button", name="Create"))
    assert w.flash() == "Team Data Science created in Engineering."
    team = Node.objects.get(slug="data-science")
    assert (team.kind, team.parent.slug) == ("team", "engineering")
    page.get_by_label("Parent").select_option(label="\u2003Data Science (team)")
    page.get_by_label("Name").fill("Forecasting")
    w.navigate(page.get_by_role("button", name="Create"))
    assert w.flash() == "Project Forecasting created in Data Science."
    project = Node.objects.get(slug="forecasting")
    assert (project.kind, project.parent_id) == ("project", team.pk)
    # a duplicate slug is a field error, and nothing is created
    page.get_by_label("Parent").select_option(label="\u2003Data Science (team)")
    page.get_by_label("Name").fill("Forecasting")
    w.navigate(page.get_by_role("button", name="Create"))
    assert "A sibling with this slug already exists." in page.locator(".field .errors").inner_text()
    assert Node.objects.filter(slug="forecasting").count() == 1
    w.shot("tree-field-error")
    w.navigate(page.get_by_role("link", name="Forecasting"))
    w.shot("project")

    # -- invite a member -----------------------------------------------------------------
    w.nav("Members")
    w.shot("members")
    w.navigate(page.get_by_role("link", name="Invitations"))
    page.get_by_label("Email").fill("dana@example.com")
    page.get_by_label("Place").select_option(label="\u2003\u2003Forecasting (project)")
    page.get_by_label("Role").select_option("developer")
    w.navigate(page.get_by_role("button", name="Send invitation"))
    assert w.flash() == "Invitation sent to dana@example.com for Forecasting."
    assert page.locator("tbody tr").first.locator(".badge.pending").inner_text() == "Pending"
    assert len(mail.outbox) == 1
    token = re.search(r"mri_[\w-]+", mail.outbox[0].body).group(0)
    w.shot("invitations")

    # -- create a key and copy it ---------------------------------------------------------
    w.nav("API keys")
    w.navigate(page.get_by_role("link", name="New API key").first)
    page.get_by_label("Project").select_option(label="\u2003\u2003Forecasting (project)")
    page.get_by_label("Name").fill("forecast service")
    page.get_by_label("Allowed models").fill("acme-ai/*")
    page.get_by_label("Requests per minute").fill("60")
    w.shot("key-new")
    w.navigate(page.get_by_role("button", name="Create key"))
    raw = page.locator("#raw-key").input_value()
    assert raw.startswith("mrk_")
    page.get_by_role("button", name="Copy").click()
    page.locator("[data-copied=true]").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == raw
    w.shot("key-secret")
    ctx = default_resolver.resolve_sync(raw)
    key = ApiKey.objects.get(name="forecast service")
    assert (ctx.project_id, key.rpm_limit, key.allowed_models) == (project.pk, 60, ["acme-ai/*"])
    w.navigate(page.get_by_role("link", name="Done: open the key"))
    assert raw not in page.content()  # shown once: never again
    w.shot("key")
    w.nav("API keys")
    w.shot("keys")

    # -- set a budget on the project ---------------------------------------------------------
    w.nav("Budgets")
    w.shot("budgets-empty")
    page.get_by_label("Applies to").select_option(label="\u2003\u2003\u2003Forecasting (project)")
    page.locator("#id_name").fill("Forecasting monthly")
    page.get_by_label("Limit (USD)").fill("2")
    w.navigate(page.get_by_role("button", name="Create budget"))
    assert w.flash() == "Budget created."
    budget = Budget.objects.get(name="Forecasting monthly")
    assert (budget.scope, budget.scope_id, budget.limit_usd) == ("project", project.pk, D("2"))

    # -- fund the organization: an enterprise transfer recorded by the admin ----------------
    w.nav("Balance and ledger")
    page.get_by_label("Amount (USD)").fill("250")
    page.get_by_label("Reference").fill("WIRE-2026-11")
    w.navigate(page.get_by_role("button", name="Record top-up"))
    assert w.flash() == "Top-up of $250.00 recorded; balance $250.00."

    # -- usage made with the new key (through billing's admission backend: the gateway's
    # pipeline does not call billing yet), then the dashboard, the CSV and the alerts --------
    owner = key.membership
    in_thread(spend, project, owner, key, "0.90", model="acme-ai/swift-1", tokens=(1200, 300))
    in_thread(spend, project, owner, key, "0.30", model="acme-ai/swift-1", tokens=(400, 100))
    budget_alerts_evaluate()
    w.nav("Budgets")
    row = page.locator("tbody tr", has_text="Forecasting monthly")
    assert "$1.20 · 60.0%" in row.inner_text()
    w.shot("budgets")
    w.nav("Usage")
    stats = page.locator(".stat .value").all_inner_texts()
    assert stats[:4] == ["2", "1600", "400", "$1.20"]
    assert page.locator("svg.chart rect.bar").count() == 14
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    lines = Path(download.value.path()).read_text().strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("created_at,request_id,")
    w.shot("usage")
    w.nav("Balance and ledger")
    assert "$248.80" in page.locator(".stat").first.inner_text()
    assert page.locator("tbody tr").count() == 3  # top-up, two usage charges
    w.shot("billing")
    w.nav("Notifications")
    assert page.locator(".activity li").count() == 1  # 60 % crossed the 50 % threshold
    w.shot("notifications")

    # -- a routing policy and a route preview ------------------------------------------------
    w.nav("Routing policies")
    form = page.locator("#set-policy")
    form.get_by_label("Applies at").select_option(label="\u2003Engineering (department)")
    form.get_by_label("Strategy").select_option("cost")
    w.navigate(form.get_by_role("button", name="Save policy"))
    assert w.flash() == "Routing policy of Engineering saved."
    preview = page.locator("#preview")
    preview.get_by_label("Request from").select_option(label="\u2003\u2003Forecasting (project)")
    preview.get_by_label("Prompt").fill("Summarise the plot of Hamlet in two sentences.")
    w.navigate(preview.get_by_role("button", name="Preview"))
    assert "Strategy cost" in page.locator("#preview").inner_text()
    assert page.locator("#preview tbody tr").first.locator("td").nth(1).inner_text() == "swift-1-eu"
    w.shot("policies")

    # -- the rest of the pages -------------------------------------------------------------
    w.nav("Models")
    assert page.locator("tbody tr").count() == 3
    page.get_by_label("Provider").select_option("acme-ai")  # submits by itself
    page.wait_for_url(re.compile(r"provider=acme-ai"))
    page.get_by_label("Tools").check()
    w.navigate(page.get_by_role("button", name="Filter"))
    page.wait_for_url(re.compile(r"cap=tools"))
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("td").nth(3).inner_text() == "1"  # $ per million input tokens
    w.shot("models")
    w.navigate(rows.first.locator("a").first)
    w.shot("model")
    w.nav("Deployments")
    assert "swift-1-eu" in page.locator("tbody").inner_text()
    w.shot("deployments")
    w.nav("Audit log")
    assert page.locator("tbody tr").first.locator("code").inner_text() == "routing_policy.set"
    w.shot("audit")
    w.nav("Settings")
    w.shot("settings")
    page.locator(".switcher summary").click()  # the organization switcher
    w.navigate(page.get_by_role("link", name="All organizations…"))
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
    w.navigate(page.get_by_role("button", name="Log out"))
    page.wait_for_url(f"{live_server.url}/login/")

    # -- the invited member accepts --------------------------------------------------------
    dana = UserFactory(username="dana", email="dana@example.com")
    dana.set_password("dana's long password")
    dana.save()
    page.get_by_label("Username").fill("dana")
    page.get_by_label("Password").fill("dana's long password")
    w.navigate(page.get_by_role("button", name="Log in"))
    page.wait_for_url(f"{live_server.url}/orgs/")
    w.navigate(page.get_by_role("link", name="Accept an invitation"))
    page.get_by_label("Token").fill(token)
    w.navigate(page.get_by_role("button", name="Join"))
    page.wait_for_url(f"{live_server.url}/o/demo/")
    assert w.flash() == "Welcome to Demo Organization: you are developer of Forecasting."
    membership = Membership.objects.get(user=dana, removed_at__isnull=True)
    assert (membership.node_id, membership.role) == (project.pk, "developer")
    assert Invitation.objects.get(email="dana@example.com").accepted_at is not None
    w.shot("member-overview")
    context.close()
