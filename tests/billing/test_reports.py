"""Reports: CSV and PDF built by the Celery task (totals equal the database), status and
progress rows, signed expiring downloads, monthly statements, cross-tenant 404s."""

from __future__ import annotations

import csv
import datetime as dt
import re
import subprocess
from decimal import Decimal

import pytest
import time_machine
from django.core import mail, signing
from django.db.models import Sum
from rest_framework.test import APIClient

from billing import services as billing_services
from billing.analytics.rollups import rollup_advance
from billing.models import BudgetUsage, Report, ReportStatus, UsageRecord
from billing.money import usd_text
from billing.reports import services as reports
from billing.reports.progress import report_progress as progress_of
from billing.reports.statement_pdf import ledger_movements
from billing.reports.statements import statements_build_due
from billing.reports.tasks import report_build_task, statements_monthly
from orgs import services
from orgs.audit import Actor
from orgs.models import AuditEvent, Role
from tests.billing.analytics_helpers import make_tenant, record, reference_catalog, team_lead
from tests.orgs.factories import SYSTEM, add_member

pytestmark = pytest.mark.django_db
D = Decimal
UTC = dt.UTC
DAY1 = dt.datetime(2026, 11, 2, tzinfo=UTC)
PERIOD = {"from": "2026-11-02", "to": "2026-11-04"}


# The clock every test here runs on: the day after the usage the fixtures record (2 to 4
# November 2026), so "this month" is the month that usage is in. Time moves on from there.
NOW = dt.datetime(2026, 11, 5, 12, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clock():
    with time_machine.travel(NOW, tick=True):
        yield


@pytest.fixture(autouse=True)
def _reports_dir(settings, tmp_path):
    settings.REPORTS_DIR = tmp_path / "reports"


@pytest.fixture
def data():
    reference_catalog()
    a = make_tenant("alpha")
    b = make_tenant("beta")
    for i in range(30):
        record(
            a,
            at=DAY1 + dt.timedelta(hours=2 * i, minutes=7),
            second=i % 3 == 0,
            model="openai/gpt-4o-mini" if i % 2 else "anthropic/claude-3-5-haiku",
            provider="openai" if i % 2 else "anthropic",
            tokens_in=1000 + i,
            tokens_out=200 + i,
            tokens_cached=i,
            cost=f"0.{i + 1:06d}",
        )
    record(b, at=DAY1.replace(hour=3), cost="7.5")
    rollup_advance(lag_seconds=0)
    return {"a": a, "b": b}


def login(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def create(client, slug, django_capture_on_commit_callbacks, **body):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(f"/api/orgs/{slug}/reports/", {**PERIOD, **body}, format="json")
    return response, callbacks


def build(report_id: int) -> Report:
    assert report_build_task(report_id) == "done"
    return Report.objects.get(pk=report_id)


def db_total(org, **filters):
    return UsageRecord.objects.filter(organization=org, **filters).aggregate(s=Sum("cost"))["s"]


def test_csv_report_streams_every_record_and_totals_match(data, django_capture_on_commit_callbacks):
    a = data["a"]
    client = login(a.tree.owner)
    response, callbacks = create(client, "alpha", django_capture_on_commit_callbacks, kind="csv")
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["progress"], body["download_url"]) == ("pending", 0, None)
    assert len(callbacks) == 1  # the build task is enqueued after commit
    report = build(body["id"])
    assert (report.status, report.progress, report.rows) == ("done", 100, 30)
    detail = client.get(f"/api/orgs/alpha/reports/{report.pk}/").json()
    assert detail["status"] == "done"
    download = client.get(detail["download_url"])
    assert download.status_code == 200
    assert download["Content-Type"] == "text/csv"
    text = b"".join(download.streaming_content).decode()
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 30
    assert sum(D(r["cost_usd"]) for r in rows) == db_total(a.org) == D("0.000465")
    first = rows[0]  # 2026-11-02 00:07, i = 0: 1000 in (0 cached), 200 out on the reference
    assert first["created_at"] == "2026-11-02T00:07:00+00:00"
    assert first["reference_cost_usd"] == "0.004500000000"
    assert first["savings_usd"] == "0.004499000000"
    assert sum(D(r["reference_cost_usd"]) for r in rows) == D(
        sum(
            (1000 + i - i) * D("0.0000025") + i * D("0.00000125") + (200 + i) * D("0.00001")
            for i in range(30)
        )
    )
    assert {r["key_id"] for r in rows} == {str(a.world.key_id), str(a.key2_id)}
    assert AuditEvent.objects.filter(organization=a.org, action="report.create").count() == 1


def test_csv_report_of_a_team_lead_covers_their_subtree_only(
    data, django_capture_on_commit_callbacks
):
    a = data["a"]
    lead = team_lead(a, second=True)
    client = login(lead.user)
    refused, _ = create(client, "alpha", django_capture_on_commit_callbacks, kind="csv")
    assert refused.status_code == 403  # the organization is not theirs to report on
    assert Report.objects.count() == 0
    response, _ = create(
        client, "alpha", django_capture_on_commit_callbacks, kind="csv", node=a.team2.pk
    )
    assert response.status_code == 202
    report = build(response.json()["id"])
    assert report.rows == 10
    path = reports.report_path(report)
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sum(D(r["cost_usd"]) for r in rows) == db_total(a.org, team_id=a.team2.pk)
    assert client.get("/api/orgs/alpha/reports/").json()["count"] == 1


def pdf_text(path, *, page: int | None = None) -> str:
    pages = [] if page is None else ["-f", str(page), "-l", str(page)]
    return subprocess.run(
        ["pdftotext", "-layout", *pages, str(path), "-"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def pdf_pages(path) -> int:
    info = subprocess.run(["pdfinfo", str(path)], check=True, capture_output=True, text=True)
    return int(
        next(line for line in info.stdout.splitlines() if line.startswith("Pages:")).split()[1]
    )


def chart_text(text: str) -> str:
    """The daily spend section: from its heading to the next one (the chart's labels)."""
    return text.split("Daily spend", 1)[1].split("Spend by team", 1)[0]


def cells(text: str, starts: str) -> list[str]:
    """The cells (runs split by two or more spaces) of the line that starts with ``starts``."""
    line = next(line for line in text.splitlines() if line.strip().startswith(starts))
    return re.split(r"\s{2,}", line.strip())


def test_pdf_report_totals_equal_the_database(data, django_capture_on_commit_callbacks):
    a = data["a"]
    billing_services.budget_create(
        actor=Actor.system(),
        organization=a.org,
        scope="team",
        scope_id=a.team2.pk,
        period="monthly",
        limit_usd="12.50",
        name="research cap",
    )
    client = login(a.tree.owner)
    response, _ = create(client, "alpha", django_capture_on_commit_callbacks, kind="pdf")
    report = build(response.json()["id"])
    assert report.pages == pdf_pages(reports.report_path(report))
    text = pdf_text(reports.report_path(report))
    total = db_total(a.org)
    reference = sum(
        (1000 + i - i) * D("0.0000025") + i * D("0.00000125") + (200 + i) * D("0.00001")
        for i in range(30)
    )
    lines = {
        " ".join(line.split()[:-1]): line.split()[-1] for line in text.splitlines() if line.strip()
    }
    assert lines["Total cost (USD)"] == f"{total:.12f}" == "0.000465000000"
    assert lines["Actual spend"] == f"{total:.12f}"
    assert lines["Reference cost"] == f"{reference:.12f}"
    assert lines["Savings"] == f"{reference - total:.12f}"
    for heading in (
        "Organization: Alpha (alpha)",
        "Period: 2026-11-02 00:00 to 2026-11-05 00:00 (UTC, end excluded)",
        "Spend by department",
        "Spend by team",
        "Spend by project",
        "Spend by model",
        "Spend by provider",
        "Top 25 API keys by spend",
        "Budget status",
        "research cap",
        "Daily spend",
    ):
        assert heading in text, heading
    requests_line = next(line for line in text.splitlines() if line.strip().startswith("Requests"))
    assert requests_line.split()[-1] == "30"


def test_pdf_report_page_one_is_the_summary_with_the_analytics_figures(
    data, django_capture_on_commit_callbacks
):
    a = data["a"]
    budget = billing_services.budget_create(
        actor=Actor.system(),
        organization=a.org,
        scope="team",
        scope_id=a.team2.pk,
        period="monthly",
        limit_usd="12.50",
        name="research cap",
    )
    client = login(a.tree.owner)
    [listed] = client.get("/api/orgs/alpha/budgets/").json()["results"]
    BudgetUsage.objects.create(
        budget=budget, period_start=dt.datetime.fromisoformat(listed["period_start"]), spent="4.25"
    )
    response, _ = create(client, "alpha", django_capture_on_commit_callbacks, kind="pdf")
    report = build(response.json()["id"])
    path = reports.report_path(report)
    assert report.pages == pdf_pages(path) == 3  # 30 requests; it was 8 with a page per table

    period = "from=2026-11-02&to=2026-11-04"
    totals = client.get(f"/api/orgs/alpha/analytics/summary/?{period}").json()["totals"]
    departments = client.get(
        f"/api/orgs/alpha/analytics/breakdown/?{period}&group_by=department"
    ).json()["rows"]
    models = client.get(f"/api/orgs/alpha/analytics/breakdown/?{period}&group_by=model").json()[
        "rows"
    ]
    [listed] = client.get("/api/orgs/alpha/budgets/").json()["results"]
    page1 = pdf_text(path, page=1)
    assert "MegaRouter spend report" in page1  # the title block is on the summary page
    assert cells(page1, "Period ") == ["Period", "2026-11-02 to 2026-11-04 (3 days)"]
    assert cells(page1, "Total spend") == ["Total spend", usd_text(D(totals["cost"]))]
    assert usd_text(D(totals["cost"])) == "$0.000465"
    savings_net = usd_text(D(totals["savings_net"]))
    assert cells(page1, "Savings, net of prompt cache lost") == [
        "Savings, net of prompt cache lost",
        f"{savings_net} (99.7% of the reference cost)",
    ]
    assert cells(page1, "Requests") == ["Requests", str(totals["requests"])] == ["Requests", "30"]
    assert [r["department_name"] for r in departments] == ["Engineering"]
    for row in departments:
        assert cells(page1, f"{row['department_name']} (#{row['department']})")[1:] == [
            str(row["requests"]),
            f"{row['tokens_in'] + row['tokens_out']:,}",
            usd_text(D(row["cost"])),
            usd_text(D(row["reference_cost"])),
            usd_text(D(row["savings"])),
        ]
    assert [r["model"] for r in models] == ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku"]
    for row in models:
        assert cells(page1, row["model"])[3] == usd_text(D(row["cost"]))
    limit, spent = D(listed["limit_usd"]), D(listed["spent"])
    assert (limit, spent) == (D("12.50"), D("4.25"))
    assert cells(page1, f"research cap (team #{a.team2.pk})")[1:] == [
        "monthly, block",
        usd_text(limit),
        usd_text(spent),
        usd_text(limit - spent),
        "34.0%",
    ]
    assert "Spend by team" not in page1  # the breakdowns follow the summary


def test_pdf_report_of_one_day_charts_that_day(data, django_capture_on_commit_callbacks):
    client = login(data["a"].tree.owner)
    response, _ = create(
        client,
        "alpha",
        django_capture_on_commit_callbacks,
        kind="pdf",
        **{"from": "2026-11-03", "to": "2026-11-03"},
    )
    report = build(response.json()["id"])
    chart = chart_text(pdf_text(reports.report_path(report)))
    # the x axis is the one day (it spanned 2025 to 2028 around a single point)
    assert re.findall(r"\d{4}-\d{2}-\d{2}", chart) == ["2026-11-03"]
    assert not re.search(r"\b20(2[0-5]|2[7-9])\b", chart)
    assert "$0.0" in chart  # money labels on the y axis
    assert "No spend" not in chart


def test_pdf_report_of_a_year_has_month_ticks(data, django_capture_on_commit_callbacks):
    client = login(data["a"].tree.owner)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            "/api/orgs/alpha/reports/", {"kind": "pdf", "days": 365}, format="json"
        )
    assert response.status_code == 202
    report = build(response.json()["id"])
    assert (report.period_start, report.period_end) == (
        dt.datetime(2025, 11, 6, tzinfo=UTC),
        dt.datetime(2026, 11, 6, tzinfo=UTC),
    )
    chart = chart_text(pdf_text(reports.report_path(report)))
    months = ["Dec 2025", "Jan 2026", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep"]
    ticks = cells(chart, "Dec 2025")
    assert ticks == [*months, "Oct", "Nov"]
    assert not re.search(r"\d{4}-\d{2}-\d{2}", chart)  # no per-day labels


def test_pdf_report_of_an_empty_period_says_so(data, django_capture_on_commit_callbacks):
    client = login(data["a"].tree.owner)
    response, _ = create(
        client,
        "alpha",
        django_capture_on_commit_callbacks,
        kind="pdf",
        **{"from": "2026-10-01", "to": "2026-10-07"},
    )
    report = build(response.json()["id"])
    path = reports.report_path(report)
    text = pdf_text(path)
    assert "No spend in this period." in chart_text(text)
    assert cells(pdf_text(path, page=1), "Total spend") == ["Total spend", "$0.00"]
    assert report.pages == pdf_pages(path) == 2


def test_download_links_are_signed_per_user_and_expire(
    data, django_capture_on_commit_callbacks, monkeypatch
):
    a = data["a"]
    client = login(a.tree.owner)
    response, _ = create(client, "alpha", django_capture_on_commit_callbacks, kind="csv")
    report = build(response.json()["id"])
    url = client.get(f"/api/orgs/alpha/reports/{report.pk}/").json()["download_url"]
    manager = add_member(a.tree.root, Role.BILLING_MANAGER)
    other = login(manager.user)
    assert other.get(url).status_code == 403  # someone else's link
    assert other.get(f"/api/orgs/alpha/reports/{report.pk}/download/").status_code == 403
    assert client.get(url + "x").status_code == 403  # tampered
    lead = team_lead(a)  # sees only team 1: a report of the organization is outside it
    token = reports.report_download_token(report=report, user_id=lead.user_id)
    assert (
        login(lead.user)
        .get(f"/api/orgs/alpha/reports/{report.pk}/download/?token={token}")
        .status_code
        == 403
    )
    later = signing.time.time() + 3601
    monkeypatch.setattr(signing.time, "time", lambda: later)
    assert client.get(url).status_code == 403  # expired


def test_a_service_token_requests_and_downloads_its_own_report(
    data, django_capture_on_commit_callbacks
):
    a = data["a"]
    raw = services.service_token_create(
        actor=SYSTEM, node=a.tree.root, name="exporter", scopes=["reports:read", "reports:write"]
    ).raw_token
    bot = APIClient()
    bot.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    response, _ = create(bot, "alpha", django_capture_on_commit_callbacks, kind="csv")
    assert response.status_code == 202
    report = build(response.json()["id"])
    assert report.requested_by_id is None
    url = bot.get(f"/api/orgs/alpha/reports/{report.pk}/").json()["download_url"]
    download = bot.get(url)
    assert download.status_code == 200
    rows = list(csv.DictReader(b"".join(download.streaming_content).decode().splitlines()))
    assert len(rows) == 30
    owner = login(a.tree.owner)
    assert owner.get(url).status_code == 403  # the link is the token's
    owner_url = owner.get(f"/api/orgs/alpha/reports/{report.pk}/").json()["download_url"]
    assert bot.get(owner_url).status_code == 403
    event = AuditEvent.objects.get(organization=a.org, action="report.create")
    assert event.actor_label.startswith("service token exporter (mrs_")


def test_failed_build_records_the_error_and_is_not_rerun(data, monkeypatch, settings):
    a = data["a"]
    report = Report.objects.create(
        organization=a.org,
        node=a.tree.root,
        kind="pdf",
        period_start=DAY1,
        period_end=DAY1 + dt.timedelta(days=1),
    )

    def boom(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("billing.reports.services.report_pdf_write", boom)
    with pytest.raises(RuntimeError):
        report_build_task(report.pk)
    report.refresh_from_db()
    assert (report.status, report.error, report.file_name) == (
        "failed",
        "RuntimeError: disk full",
        "",
    )
    assert report_build_task(report.pk) == "skipped"
    assert report_build_task(999_999) == "gone"
    org_dir = settings.REPORTS_DIR / str(a.org.pk)
    assert list(org_dir.iterdir()) == []  # the partial file is gone


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("post", ""), ("get", "ID/"), ("get", "ID/download/?token=TOKEN")],
)
def test_other_organizations_reports_are_404_and_unchanged(
    data, django_capture_on_commit_callbacks, method, suffix
):
    b = data["b"]
    report = Report.objects.create(
        organization=b.org,
        node=b.tree.root,
        kind="csv",
        period_start=DAY1,
        period_end=DAY1 + dt.timedelta(days=1),
        status=ReportStatus.DONE,
        file_name="x.csv",
    )
    intruder = data["a"].tree.owner
    token = reports.report_download_token(report=report, user_id=intruder.pk)
    suffix = suffix.replace("ID", str(report.pk)).replace("TOKEN", token)
    before = list(Report.objects.order_by("id").values())
    client = login(intruder)
    url = f"/api/orgs/beta/reports/{suffix}"
    response = (
        client.post(url, {**PERIOD, "kind": "csv"}, format="json")
        if method == "post"
        else client.get(url)
    )
    assert response.status_code == 404
    own_org = client.get(f"/api/orgs/alpha/reports/{report.pk}/")
    assert own_org.status_code == 404
    assert list(Report.objects.order_by("id").values()) == before


def test_monthly_statement_is_built_once_and_emailed_to_billing_managers(data):
    a = data["a"]
    manager = add_member(a.tree.root, Role.BILLING_MANAGER)
    add_member(a.tree.team, Role.VIEWER)  # not a recipient
    billing_services.transfer_record(
        actor=Actor.system(), organization=a.org, amount="25.00", reference="wire-2"
    )
    now = dt.datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    moves = ledger_movements(
        organization_id=a.org.pk, start=month_start, end=month_start + dt.timedelta(days=32)
    )
    assert moves.opening == D("0")
    assert moves.closing == D("125")
    assert moves.by_kind == {"topup": (2, D("125"))}

    next_month = (month_start + dt.timedelta(days=32)).replace(day=1, hour=1)
    mail.outbox.clear()
    built = statements_build_due(now=next_month)
    assert sorted(r.organization.slug for r in built) == ["alpha", "beta"]
    statement = next(r for r in built if r.organization_id == a.org.pk)
    assert (statement.kind, statement.status, statement.period_start) == (
        "statement",
        "done",
        month_start,
    )
    recipients = sorted(m.to[0] for m in mail.outbox if "Alpha" in m.subject)
    assert recipients == sorted([a.tree.owner.email, manager.user.email])
    assert f"/api/orgs/alpha/reports/{statement.pk}/download/?token=" in mail.outbox[0].body
    text = pdf_text(reports.report_path(statement))
    assert "Opening balance" in text and "0.000000000000" in text
    assert "Closing balance" in text and "125.000000000000" in text
    assert "Savings measured against openai/gpt-4o" in " ".join(text.split())
    assert statements_build_due(now=next_month) == []  # once per month
    assert Report.objects.filter(kind="statement").count() == 2


def test_statements_task_before_any_complete_month_builds_nothing(data):
    assert statements_monthly() == 0  # both organizations were created this month
    assert Report.objects.count() == 0


def test_housekeeping_fails_stuck_reports_and_deletes_old_files(data, settings):
    a = data["a"]
    now = dt.datetime.now(UTC)

    def make(kind, status, finished_days_ago=None, started_hours_ago=None):
        return Report.objects.create(
            organization=a.org,
            node=a.tree.root,
            kind=kind,
            status=status,
            period_start=DAY1,
            period_end=DAY1 + dt.timedelta(days=1),
            file_name=f"{kind}-{status}-{finished_days_ago}.bin",
            started_at=None
            if started_hours_ago is None
            else now - dt.timedelta(hours=started_hours_ago),
            finished_at=None
            if finished_days_ago is None
            else now - dt.timedelta(days=finished_days_ago),
        )

    stuck = make("pdf", "running", started_hours_ago=2)
    busy = make("csv", "running", started_hours_ago=0.1)
    old = make("csv", "done", finished_days_ago=31)
    fresh = make("pdf", "done", finished_days_ago=2)
    statement = make("statement", "done", finished_days_ago=400)
    for report in (old, fresh, statement):
        path = reports.report_path(report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    old_path = reports.report_path(old)

    assert reports.reports_housekeep(now=now) == {"stuck": 1, "deleted": 1}
    stuck.refresh_from_db()
    busy.refresh_from_db()
    assert (stuck.status, stuck.error) == ("failed", "The worker building it stopped.")
    assert busy.status == "running"
    assert not old_path.exists()
    assert not Report.objects.filter(pk=old.pk).exists()
    assert reports.report_path(fresh).exists() and reports.report_path(statement).exists()
    assert reports.reports_housekeep(now=now) == {"stuck": 0, "deleted": 0}


def test_csv_progress_is_recorded_while_running(data, monkeypatch):
    a = data["a"]
    report = Report.objects.create(
        organization=a.org,
        node=a.tree.root,
        kind="csv",
        period_start=DAY1,
        period_end=DAY1 + dt.timedelta(days=3),
    )
    seen = []

    def spy(report_id, progress):
        progress_of(report_id, progress)
        seen.append(Report.objects.values_list("status", "progress").get(pk=report_id))

    monkeypatch.setattr("billing.reports.csv_export.PROGRESS_EVERY", 10)
    monkeypatch.setattr("billing.reports.csv_export.report_progress", spy)
    build(report.pk)
    assert seen == [("running", 33), ("running", 66), ("running", 99)]
    progress_of(report.pk, 5)  # a finished report is left alone
    assert Report.objects.values_list("status", "progress").get(pk=report.pk) == ("done", 100)
