"""A new admin walks through the console in headless Chromium (Debian's, through Playwright),
the issue's whole path with real components: log in with the seed_demo admin, create a team and
a project, invite a member, create a key and copy it, set a budget, fund the organization, send
a request with that key through the official ``openai`` SDK to the real gateway (uvicorn on port
0 serving ``megarouter.asgi``, console and /v1 alike, with the provider simulator upstream),
process the usage (billing's usage task, the analytics rollup with lag 0), find the request's
exact cost (the ``x-megarouter-cost-usd`` header) on the usage and spend pages, download a CSV
and a PDF report and check their totals, look at every page; the invited person opens the
email's link, creates an account and joins.

Screenshots of every page go to tests/artifacts/console/ (gitignored) for people to look at.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.db import connections

from billing import webhooks
from billing.analytics.tasks import analytics_rollup
from billing.models import Budget, Report, UsageRecord
from billing.reports.tasks import report_build_task
from billing.tasks import usage_events_process
from console.templatetags.console import usd
from megarouter.celery import app as celery_app
from orgs.keys import default_resolver
from orgs.models import ApiKey, Invitation, Membership, Node
from tests.console.factories import ModelFactory, ProviderFactory
from tests.gateway import factories as gw
from tests.gateway.conftest import ServerThread, reset_caches

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


@pytest.fixture
def stack(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The provider simulator and one uvicorn server (port 0) running the production ASGI app:
    the console and the gateway's /v1 on the same origin."""
    from gateway.simulator.server import Options, run_in_thread
    from megarouter.asgi import application

    # Report builds are queued on commit (delay_on_commit): an in-memory broker keeps the
    # message in this process; the test then runs the task itself, as the worker would.
    monkeypatch.setitem(celery_app.conf, "broker_url", "memory://")
    settings.ANALYTICS_ROLLUP_LAG = 0
    sim_url, stop = run_in_thread(port=0, options=Options())
    try:
        with ServerThread(application) as server:
            yield {"url": server.url, "sim": sim_url}
    finally:
        stop()


def pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


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


def test_new_admin_walkthrough(browser, stack, tmp_path, monkeypatch, settings):
    demo = seed_demo(tmp_path, monkeypatch, settings)
    base = stack["url"]
    # The catalog: Acme AI speaks the OpenAI wire format and its deployment is the simulator.
    # swift-1 costs $0 per input token and $0.024 per output token; the simulator answers 50
    # output tokens, so one request costs exactly $1.20 (60 % of the project's $2 budget).
    acme = gw.provider_create("acme-ai", "openai", f"{stack['sim']}/openai/v1")
    chat = gw.model_create(acme, "swift-1", price_in=D(0), price_out=D("0.024"))
    gw.deployment_create(
        chat,
        name="swift-1-eu",
        base_url=f"{stack['sim']}/openai/v1",
        upstream_name="gpt-sim~tokens=50",
        credential=gw.credential_create(),
        region="eu-west-1",
    )
    ModelFactory(provider=acme, provider_model_name="embed-1", mode="embedding")
    ModelFactory(provider=ProviderFactory(slug="zeta", name="Zeta"), provider_model_name="z-large")
    reset_caches()

    context = browser.new_context(viewport={"width": 1360, "height": 860}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    page.set_default_timeout(5000)
    page.on("dialog", lambda dialog: dialog.accept())
    w = Walk(page, base)

    # -- log in with the seed_demo admin -------------------------------------------------
    w.go("/")
    assert page.url == f"{base}/login/?next=/"
    page.get_by_label("Username").fill(demo["admin_username"])
    page.get_by_label("Password").fill("wrong password")
    w.navigate(page.get_by_role("button", name="Log in"))
    assert (
        "Please enter a correct username and password" in page.locator(".form-errors").inner_text()
    )
    w.shot("login-error")
    page.get_by_label("Password").fill(demo["admin_password"])
    w.navigate(page.get_by_role("button", name="Log in"))
    page.wait_for_url(f"{base}/o/demo/")
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
    (invitation_link,) = re.findall(r"https?://\S+", mail.outbox[0].body)
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

    # -- fund the organization: a card purchase. The console starts the checkout and sends
    # the buyer to the payment provider's page (here: back to the console); the provider's
    # signed webhook, not anyone in the console, credits the balance.
    org_slug = "demo"
    settings.BILLING_PAYMENT_WEBHOOK_SECRET = "whsec_walk"
    settings.BILLING_CHECKOUT_URL = f"{base}/o/{org_slug}/billing/?paying={{id}}&cents={{cents}}"
    w.nav("Balance and ledger")
    page.get_by_label("Amount (USD)").fill("250")
    w.navigate(page.get_by_role("button", name="Continue to payment"))
    assert "paying=co_" in page.url and "cents=25000" in page.url
    checkout_id = page.url.split("paying=")[1].split("&")[0]
    assert "$0.00" in page.locator(".stat").first.inner_text()  # not credited yet
    event = orjson.dumps(
        {
            "id": "evt_walk_1",
            "type": "checkout.session.completed",
            "data": {
                "object": {
                    "client_reference_id": checkout_id,
                    "amount_total": 25000,
                    "currency": "usd",
                    "payment_status": "paid",
                    "metadata": {"organization": org_slug},
                }
            },
        }
    )
    paid = httpx.post(
        f"{base}/api/billing/webhooks/payments/",
        content=event,
        headers={
            "content-type": "application/json",
            "stripe-signature": webhooks.sign(payload=event, secret="whsec_walk"),
        },
    )
    assert paid.json() == {"status": "applied", "event": "evt_walk_1"}
    w.nav("Balance and ledger")
    assert "$250.00" in page.locator(".stat").first.inner_text()

    # -- a request with the new key through the official OpenAI SDK, to the real gateway ------
    import openai

    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=raw, max_retries=0, timeout=20)
    answer = sdk.chat.completions.with_raw_response.create(
        model="acme-ai/swift-1",
        messages=[{"role": "user", "content": "Forecast next week's demand in one line."}],
        max_tokens=50,
    )
    completion = answer.parse()
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 50
    cost = D(answer.headers["x-megarouter-cost-usd"])
    assert cost == D("1.2")  # 50 output tokens at $0.024

    # -- the usage task posts the record, the rollup (lag 0) makes it visible to analytics ----
    assert in_thread(usage_events_process) == 1
    assert in_thread(analytics_rollup) == 1
    record = UsageRecord.objects.get()
    assert (record.key_id, record.project_id, record.model, record.cost) == (
        key.pk,
        project.pk,
        "acme-ai/swift-1",
        cost,
    )

    w.nav("Budgets")
    row = page.locator("tbody tr", has_text="Forecasting monthly")
    assert "$1.20 · 60.0%" in row.inner_text()
    w.shot("budgets")
    w.nav("Usage")
    stats = page.locator(".stat .value").all_inner_texts()
    assert (stats[0], stats[1], stats[2], stats[3]) == (
        "1",
        str(record.tokens_in),
        "50",
        usd(cost),
    )
    assert page.locator("svg.chart rect.bar").count() == 30  # the same 30 days as Spend
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    lines = Path(download.value.path()).read_text().strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("created_at,request_id,")
    w.shot("usage")

    # -- the spend dashboard: the request's exact cost, savings, breakdowns ---------------------
    w.nav("Spend")
    assert page.locator("[data-measure=cost]").inner_text() == usd(cost) == "$1.20"
    assert page.locator("[data-measure=requests]").inner_text() == "1"
    first = page.locator("#breakdown tbody tr").first.locator("td")
    assert (first.nth(0).inner_text(), first.nth(4).inner_text()) == ("acme-ai/swift-1", "$1.20")
    assert page.locator("svg.chart rect.bar").count() == 30
    w.shot("spend")
    with page.expect_navigation():
        page.get_by_label("Break down by").select_option("project")  # submits by itself
    first = page.locator("#breakdown tbody tr").first.locator("td")
    assert (first.nth(0).inner_text(), first.nth(4).inner_text()) == ("Forecasting", "$1.20")
    assert first.nth(7).inner_text().endswith("100.0%")
    w.shot("spend-by-project")

    # -- reports: a CSV and a PDF, built by the task, polled, downloaded ------------------------
    def build_and_download(kind: str) -> Path:
        w.nav("Reports")
        page.get_by_label("Format").select_option(kind)
        page.get_by_label("Covers").select_option(label="Demo Organization (organization)")
        w.navigate(page.get_by_role("button", name="Request report"))
        assert w.flash().endswith("of Demo Organization requested: it is being built.")
        report = Report.objects.order_by("-id").first()
        assert (report.kind, report.status) == (kind, "pending")
        row = page.locator(f'tr[data-report="{report.pk}"]')
        assert row.get_attribute("data-status") == "pending"
        assert row.locator("[role=progressbar]").get_attribute("aria-valuenow") == "0"
        w.shot(f"report-{kind}-pending")
        assert in_thread(report_build_task, report.pk) == "done"
        # the page's poll sees it done and shows the download link
        link = page.locator(
            f'tr[data-report="{report.pk}"][data-status=done] a', has_text="Download"
        )
        link.wait_for()
        with page.expect_download() as download:
            link.click()
        return Path(download.value.path())

    csv_path = build_and_download("csv")
    csv_lines = csv_path.read_text().strip().splitlines()
    header, *rows = [line.split(",") for line in csv_lines]
    assert len(rows) == 1
    assert sum(D(r[header.index("cost_usd")]) for r in rows) == cost
    pdf_path = build_and_download("pdf")
    assert pdf_path.read_bytes().startswith(b"%PDF-")
    text = pdf_text(pdf_path)
    assert f"{cost:.12f}" in text  # the totals, exact to 12 places
    w.shot("reports")

    w.nav("Balance and ledger")
    assert "$248.80" in page.locator(".stat").first.inner_text()
    ledger = page.locator("section[aria-labelledby=ledger-h] tbody tr")
    assert ledger.count() == 2  # the card payment, the request's charge
    w.shot("billing")
    w.nav("Notifications")
    assert page.locator(".activity li").count() == 1  # 60 % crossed the 50 % threshold
    w.shot("notifications")

    # -- a routing policy and a route preview ------------------------------------------------
    w.nav("Routing policies")
    form = page.locator("#set-policy")
    form.get_by_label("Applies at").select_option(label="\u2003Engineering (department)")
    form.get_by_label("Strategy").select_option("cost")
    # the catalog picker under a list: suggestions from the catalog, Add appends a line
    assert page.locator("#choices-models option[value='acme-ai/swift-1']").count() == 1
    picker = form.get_by_label("Add to Blocked models")
    picker.fill("acme-ai/swift-9")  # a typo: saved, and pointed out
    form.locator(".picker").nth(1).get_by_role("button", name="Add").click()
    assert form.locator("textarea[name=blocked_models]").input_value() == "acme-ai/swift-9"
    w.navigate(form.get_by_role("button", name="Save policy"))
    assert w.flash() == "Routing policy of Engineering saved."
    assert page.locator(".messages li").nth(1).inner_text() == (
        "Blocked models: 'acme-ai/swift-9' matches no model in the catalog today."
    )
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
    assert rows.first.locator("td").nth(3).inner_text() == "0"  # $ per million input tokens
    w.shot("models")
    w.navigate(rows.first.locator("a").first)
    w.shot("model")
    w.nav("Deployments")
    assert "swift-1-eu" in page.locator("tbody").nth(1).inner_text()
    assert page.locator("#providers-h + p + .table-wrap tbody tr").count() >= 1
    # at 1366 px every column of both tables fits: nothing cut off on the right
    page.set_viewport_size({"width": 1366, "height": 860})
    overflowing = page.evaluate(
        "[...document.querySelectorAll('.table-wrap')]"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).length"
    )
    assert overflowing == 0
    w.shot("deployments")
    page.set_viewport_size({"width": 1360, "height": 860})
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
    # no amount is cut off at phone width: every stat card's value fits its card
    for path in ("/o/demo/", "/o/demo/billing/", "/o/demo/spend/"):
        w.go(path)
        assert page.locator(".stat .value").count() >= 3, path
        clipped = page.evaluate(
            "[...document.querySelectorAll('.stat .value')]"
            ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"
        )
        assert clipped == [], (path, clipped)
    page.set_viewport_size({"width": 1360, "height": 860})
    w.navigate(page.get_by_role("button", name="Log out"))
    page.wait_for_url(f"{base}/login/")

    # -- the invited member, new here, opens the email's link and creates an account ------
    w.go("/" + invitation_link.split("/", 3)[3])  # the link's host is MEGAROUTER_PUBLIC_URL
    assert page.get_by_role("heading", level=1).inner_text() == "Join Demo Organization"
    page.get_by_label("Your name").fill("Dana Scully")
    page.get_by_label("Password", exact=True).fill("dana's long password")
    page.get_by_label("Password again").fill("dana's long password")
    w.shot("invitation-sign-up")
    w.navigate(page.get_by_role("button", name="Create the account and join"))
    page.wait_for_url(f"{base}/o/demo/")
    assert w.flash() == "Welcome to Demo Organization: you are developer of Forecasting."
    dana = get_user_model().objects.get(email="dana@example.com")
    assert (dana.username, dana.first_name) == ("dana@example.com", "Dana Scully")
    membership = Membership.objects.get(user=dana, removed_at__isnull=True)
    assert (membership.node_id, membership.role) == (project.pk, "developer")
    assert Invitation.objects.get(email="dana@example.com").accepted_at is not None
    w.shot("member-overview")
    context.close()


def _totp(secret: str, at: float) -> str:
    """RFC 6238 from the secret the page shows (independent of django-otp)."""
    key = base64.b32decode(secret.replace(" ", ""))
    mac = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{value:06d}"


def test_an_owner_turns_on_mfa_logs_in_with_it_and_requires_it(browser):
    """Multi-factor authentication in the browser, against the real server: set up from the
    page's QR code secret, log in with a code, require it of the organization, log in with a
    recovery code.

    The server runs on the real clock (the browser's cookies follow it); the codes are taken
    one 30-second step ahead at login, which django-otp's tolerance of one step accepts and
    which is always newer than the step the setup used, so no run waits for a step to pass
    (tests/console/test_mfa.py covers replay and timing on a frozen clock)."""
    from megarouter.asgi import application
    from orgs.models import Organization
    from tests.console.factories import make_tree

    tree = make_tree("mfa-co")
    owner = tree.owner
    owner.set_password("owner's long password")
    owner.save()
    shots = ARTIFACTS / "mfa"
    shots.mkdir(parents=True, exist_ok=True)
    with ServerThread(application) as server:
        base = server.url
        context = browser.new_context(viewport={"width": 1360, "height": 860})
        page = context.new_page()
        page.set_default_timeout(5000)

        def log_in(code: str) -> None:
            page.goto(f"{base}/login/")
            page.get_by_label("Username").fill(owner.username)
            page.get_by_label("Password").fill("owner's long password")
            with page.expect_navigation():
                page.get_by_role("button", name="Log in").click()
            if code:
                assert page.url == f"{base}/login/mfa/"
                page.get_by_label("Code").fill(code)
                with page.expect_navigation():
                    page.get_by_role("button", name="Continue").click()

        def log_out() -> None:
            with page.expect_navigation():
                page.get_by_role("button", name="Log out").click()

        log_in("")
        assert page.url == f"{base}/o/mfa-co/"
        with page.expect_navigation():
            page.get_by_role("link", name="Security").click()
        with page.expect_navigation():
            page.get_by_role("button", name="Set up multi-factor authentication").click()
        assert page.locator(".qr svg").is_visible()
        secret = page.get_by_test_id("mfa-secret").inner_text()
        page.screenshot(path=str(shots / "01-setup.png"), full_page=True)
        page.get_by_label("Code from the app").fill(_totp(secret, time.time()))
        with page.expect_navigation():
            page.get_by_role("button", name="Turn on").click()
        codes = page.get_by_test_id("recovery-codes").locator("li").all_inner_texts()
        assert len(set(codes)) == 10
        page.screenshot(path=str(shots / "02-recovery-codes.png"), full_page=True)
        log_out()

        log_in(_totp(secret, time.time() + 30))
        assert page.url == f"{base}/o/mfa-co/"
        page.goto(f"{base}/o/mfa-co/settings/")
        page.get_by_label("Require multi-factor authentication of every member").check()
        with page.expect_navigation():
            page.locator("#mfa-h + form").get_by_role("button", name="Save").click()
        assert page.locator(".messages li").first.inner_text() == (
            "Mfa-Co now requires multi-factor authentication."
        )
        assert Organization.objects.get(slug="mfa-co").require_mfa is True
        page.screenshot(path=str(shots / "03-settings.png"), full_page=True)
        log_out()

        log_in(codes[0])  # the organization's pages open: this session passed MFA
        assert page.url == f"{base}/o/mfa-co/"
        assert (
            "You logged in with a recovery code; 9 left." in page.locator(".messages").inner_text()
        )
        context.close()
