"""The spend dashboard (analytics rollups) and the reports page: exact totals, savings against
the reference model, breakdowns by each dimension, a team lead's subtree only, another
organization's spend never; reports requested, built by the Celery task, polled as JSON and
downloaded through the signed link; refusals with nothing changed."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.test import Client

from billing.analytics.rollups import rollup_advance
from billing.models import Report
from billing.reports.tasks import report_build_task
from orgs import services
from orgs.models import AuditEvent, Role
from tests.console.factories import (
    SYSTEM,
    ModelFactory,
    ProviderFactory,
    Tenant,
    UserFactory,
    add_member,
    make_key,
    make_tenant,
    spend,
)

pytestmark = pytest.mark.django_db
D = Decimal
# The clock every test here runs on (time moves on from it): the usage they record is "today",
# inside the year 2026 that the report requests cover and after the January they expect empty.
NOW = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _clock() -> Any:
    with time_machine.travel(NOW, tick=True):
        yield


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def acme(settings: Any, tmp_path: Any) -> Tenant:
    settings.REPORTS_DIR = tmp_path / "reports"
    # The reference model: $2.50 / $10 per million tokens.
    ModelFactory(
        provider=ProviderFactory(slug="openai", name="OpenAI"),
        provider_model_name="gpt-4o",
        price=(D("0.0000025"), D("0.00001")),
    )
    return make_tenant("acme")


@pytest.fixture
def research(acme: Tenant) -> dict[str, Any]:
    """A second department with its own project, key and lead (admin of the department)."""
    team = services.node_create(actor=SYSTEM, parent=acme.other_dept, name="Vision", slug="vision")
    project = services.node_create(actor=SYSTEM, parent=team, name="Labels", slug="labels")
    lead = add_member(acme.other_dept, Role.ADMIN, UserFactory(username="research-lead"))
    key = make_key(project, lead, name="labels key").api_key
    return {"team": team, "project": project, "lead": lead, "key": key}


def usage(acme: Tenant, research: dict[str, Any]) -> None:
    """Three requests in acme's Gateway project, one in Research, one in another org."""
    t = acme.tree
    spend(t.project, acme.developer_membership, acme.developer_key, "0.40", model="acme-ai/a")
    spend(
        t.project,
        acme.developer_membership,
        acme.developer_key,
        "0.25",
        model="acme-ai/b",
        cache_lost="0.02",  # routing moved a conversation off its prompt cache
    )
    spend(t.project, t.owner_membership, acme.owner_key, "0.05", model="acme-ai/a")
    spend(research["project"], research["lead"], research["key"], "1.10", model="zeta/z")
    other = make_tenant("other")
    spend(other.tree.project, other.developer_membership, other.developer_key, "9.00")
    assert rollup_advance(lag_seconds=0) == 5


# Each request is (100 in, 50 out): $0.00075 on the reference model.
REF = D("0.00075")


def test_the_dashboard_shows_exact_spend_savings_and_the_chosen_breakdown(acme, research):
    usage(acme, research)
    client = login(acme.viewer)
    response = client.get("/o/acme/spend/?days=7&by=model")
    assert response.status_code == 200
    totals = response.context["totals"]
    assert (totals["requests"], totals["cost"], totals["reference_cost"]) == (4, D("1.8"), 4 * REF)
    assert totals["savings"] == 4 * REF - D("1.8")
    assert (totals["cache_lost"], totals["savings_net"]) == (
        D("0.02"),
        totals["savings"] - D("0.02"),
    )
    assert [
        (r["label"], r["requests"], r["cost"], r["share"]) for r in response.context["rows"]
    ] == [
        ("zeta/z", 1, D("1.1"), D("61.1")),
        ("acme-ai/a", 2, D("0.45"), D("25.0")),
        ("acme-ai/b", 1, D("0.25"), D("13.9")),
    ]
    html = response.content.decode()
    assert "$1.80" in html and "$0.003" in html  # spend and reference, exact
    assert "\u2212$1.797" in html  # negative savings shown as such
    assert "\u2212$1.817" in html and "net of $0.02 prompt cache given up" in html
    # one bar per day of the period, today's holding the spend
    bars = response.context["chart"]["bars"]
    assert len(bars) == 7 and bars[-1]["cost"] == D("1.8") and bars[-1]["reference"] == 4 * REF
    assert [b["cost"] for b in bars[:-1]] == [D(0)] * 6
    # a y axis of round values up to at least the highest day: $0, $0.50, ..., $2.00
    ticks = [t["value"] for t in response.context["chart"]["ticks"]]
    assert ticks == [D(0), D("0.5"), D("1.0"), D("1.5"), D("2.0")]
    assert 'class="tick ytick">$2.00</text>' in html and 'class="tick ytick">$0.50</text>' in html

    by_project = client.get("/o/acme/spend/?by=project").context["rows"]
    assert [(r["label"], r["cost"]) for r in by_project] == [
        ("Labels", D("1.1")),
        ("Gateway", D("0.7")),
    ]
    by_key = client.get("/o/acme/spend/?by=key").context["rows"]
    assert [(r["label"], r["cost"]) for r in by_key] == [
        ("labels key", D("1.1")),
        ("dev key", D("0.65")),
        ("owner key", D("0.05")),
    ]
    by_member = client.get("/o/acme/spend/?by=member").context["rows"]
    assert [(r["label"], r["cost"]) for r in by_member] == [
        ("research-lead", D("1.1")),
        ("acme-dev", D("0.65")),
        ("acme-owner", D("0.05")),
    ]
    by_department = client.get("/o/acme/spend/?by=department").context["rows"]
    assert [(r["label"], r["cost"]) for r in by_department] == [
        ("Research", D("1.1")),
        ("Engineering", D("0.7")),
    ]
    by_provider = client.get("/o/acme/spend/?by=provider").context["rows"]
    assert [(r["label"], r["cost"]) for r in by_provider] == [
        ("zeta", D("1.1")),
        ("acme-ai", D("0.7")),
    ]


def test_a_department_lead_sees_only_their_subtree(acme, research):
    usage(acme, research)
    response = login(research["lead"].user).get("/o/acme/spend/?by=team")
    assert response.status_code == 200
    assert response.context["totals"]["cost"] == D("1.1")
    assert response.context["whole_org"] is False
    assert [(r["label"], r["cost"]) for r in response.context["rows"]] == [("Vision", D("1.1"))]
    # the Engineering admin sees Engineering only
    engineering = login(acme.admin).get("/o/acme/spend/?by=project")
    assert [(r["label"], r["cost"]) for r in engineering.context["rows"]] == [("Gateway", D("0.7"))]


def test_periods_and_bad_dates(acme, research):
    usage(acme, research)
    client = login(acme.tree.owner)
    old = client.get("/o/acme/spend/?from=2026-01-01&to=2026-01-31")
    assert old.status_code == 200
    assert (old.context["totals"]["requests"], old.context["totals"]["cost"]) == (0, D(0))
    assert len(old.context["chart"]["bars"]) == 31
    assert "No spend in this period" in old.content.decode()
    bad = client.get("/o/acme/spend/?from=2026-02-10&to=2026-02-01")
    assert bad.status_code == 400
    assert bad.context["errors"] == {"to": "The period must end after it starts."}
    junk = client.get("/o/acme/spend/?from=yesterday&to=2026-02-01")
    assert junk.status_code == 400


def test_spend_and_reports_are_refused_without_view_billing_and_hidden_from_outsiders(acme):
    other = make_tenant("other")
    developer = login(acme.developer)
    assert developer.get("/o/acme/spend/").status_code == 403
    assert developer.get("/o/acme/reports/").status_code == 403
    assert developer.get("/o/acme/reports/status/?ids=1").status_code == 403
    outsider = login(other.tree.owner)
    assert outsider.get("/o/acme/spend/").status_code == 404
    assert outsider.get("/o/acme/reports/").status_code == 404
    nav = login(acme.viewer).get("/o/acme/").content.decode()
    assert 'href="/o/acme/spend/"' in nav and 'href="/o/acme/reports/"' in nav
    assert 'href="/o/acme/spend/"' not in developer.get("/o/acme/").content.decode()


# ---------------------------------------------------------------- reports


def request_report(client: Client, node: Any, kind: str, capture: Any, **extra: Any) -> Any:
    with capture(execute=False) as callbacks:
        response = client.post(
            "/o/acme/reports/",
            {
                "kind": kind,
                "node": node.pk,
                "since": "2026-01-01",
                "until": "2026-12-31",
                **extra,
            },
        )
    return response, callbacks


def test_a_csv_report_is_queued_built_polled_and_downloaded(
    acme, research, django_capture_on_commit_callbacks
):
    usage(acme, research)
    client = login(acme.viewer)
    response, callbacks = request_report(
        client, acme.tree.root, "csv", django_capture_on_commit_callbacks
    )
    assert response.status_code == 302 and response["Location"] == "/o/acme/reports/"
    assert len(callbacks) == 1  # report_build_task.delay_on_commit
    report = Report.objects.get()
    assert (report.kind, report.status, report.node_id, report.requested_by_id) == (
        "csv",
        "pending",
        acme.tree.root.pk,
        acme.viewer.pk,
    )
    assert report.period_start.isoformat() == "2026-01-01T00:00:00+00:00"
    assert report.period_end.isoformat() == "2027-01-01T00:00:00+00:00"
    assert AuditEvent.objects.filter(action="report.create").count() == 1

    page = client.get("/o/acme/reports/")
    assert page.context["busy"] is True
    html = page.content.decode()
    assert "2026-01-01 → 2026-12-31" in html  # the last day included
    assert 'data-poll="/o/acme/reports/status/"' in html and 'aria-valuenow="0"' in html
    status = client.get(f"/o/acme/reports/status/?ids={report.pk}").json()
    assert status["reports"][0]["status"] == "pending"
    assert status["reports"][0]["download_url"] is None

    assert report_build_task(report.pk) == "done"
    [row] = client.get(f"/o/acme/reports/status/?ids={report.pk}").json()["reports"]
    assert (row["status"], row["progress"], row["rows"]) == ("done", 100, 4)
    page = client.get("/o/acme/reports/")
    assert page.context["busy"] is False
    assert "data-poll" not in page.content.decode()
    url = page.context["rows"][0]["download_url"]
    # the same report's link (signed with a timestamp: the two may differ in the second)
    assert url.partition("token=")[0] == row["download_url"].partition("token=")[0]
    assert url in page.content.decode().replace("&amp;", "&")
    download = client.get(url)
    assert download.status_code == 200
    lines = list(csv.DictReader(io.StringIO(b"".join(download.streaming_content).decode())))
    assert len(lines) == 4
    assert sum(D(line["cost_usd"]) for line in lines) == D("1.8")
    # the link is the viewer's: another member of the organization is refused
    assert login(acme.tree.owner).get(url).status_code == 403


def test_a_pdf_report_of_a_department_for_its_lead(
    acme, research, django_capture_on_commit_callbacks
):
    usage(acme, research)
    client = login(research["lead"].user)
    form = client.get("/o/acme/reports/").context["form"]
    # the lead may only pick places inside the department
    assert [n.name for n in form.fields["node"].queryset] == ["Research", "Vision", "Labels"]
    response, _ = request_report(client, acme.other_dept, "pdf", django_capture_on_commit_callbacks)
    assert response.status_code == 302
    report = Report.objects.get()
    assert report_build_task(report.pk) == "done"
    report.refresh_from_db()
    assert report.pages >= 1 and report.size_bytes > 1000
    [row] = client.get("/o/acme/reports/").context["rows"]
    download = client.get(row["download_url"])
    body = b"".join(download.streaming_content)
    assert download["Content-Type"] == "application/pdf" and body.startswith(b"%PDF-")
    # the Engineering admin does not see the Research report
    assert login(acme.admin).get("/o/acme/reports/").context["rows"] == []
    assert login(acme.admin).get(f"/o/acme/reports/status/?ids={report.pk}").json() == {
        "reports": []
    }


def test_report_requests_refused_or_invalid_change_nothing(
    acme, research, django_capture_on_commit_callbacks
):
    other = make_tenant("other")
    audit = AuditEvent.objects.count()
    cases = [
        (login(acme.developer), acme.tree.root, {}, 403),  # no view_billing anywhere
        (login(other.tree.owner), acme.tree.root, {}, 404),  # another organization
        (login(acme.admin), acme.other_dept, {}, 400),  # outside the admin's department
        (login(acme.tree.owner), other.tree.root, {}, 400),  # another org's node
        (login(acme.tree.owner), acme.tree.root, {"kind": "xlsx"}, 400),
        (login(acme.tree.owner), acme.tree.root, {"until": "2025-12-01"}, 400),
    ]
    for client, node, extra, expected in cases:
        response, callbacks = request_report(
            client, node, extra.pop("kind", "csv"), django_capture_on_commit_callbacks, **extra
        )
        assert response.status_code == expected, (node, extra)
        assert callbacks == []
    assert Report.objects.count() == 0
    assert AuditEvent.objects.count() == audit
    page = login(acme.tree.owner).post(
        "/o/acme/reports/",
        {"kind": "csv", "node": acme.tree.root.pk, "since": "2026-02-01", "until": "2026-01-01"},
    )
    assert "The period must end on or after its first day." in page.content.decode()


def test_the_overview_shows_balance_runway_spend_savings_and_the_top_spenders(acme, research):
    usage(acme, research)
    client = login(acme.viewer)
    response = client.get("/o/acme/")
    money = response.context["money"]
    spend_page = client.get("/o/acme/spend/?days=30").context["totals"]
    # the same selectors as the spend page: the same figures
    assert money["totals"]["cost"] == spend_page["cost"] == D("1.8")
    assert money["totals"]["savings_net"] == spend_page["savings_net"]
    assert money["totals"]["requests"] == 4 and money["error_rate"] == D("0.0")
    # runway: the available balance over the last week's average daily spend
    assert money["burn_per_day"] == D("1.8") / 7
    available = money["balance"]["available"]
    assert money["runway_days"] == (available / (D("1.8") / 7)).quantize(D("0.1"))
    top = {dimension: [r["label"] for r in rows] for dimension, _, rows in money["top"]}
    assert top["key"] == ["labels key", "dev key", "owner key"]
    assert top["model"] == ["zeta/z", "acme-ai/a", "acme-ai/b"]
    assert top["project"] == ["Labels", "Gateway"]
    html = response.content.decode()
    assert "Available balance" in html and "$1.80" in html and "Top keys" in html
    # a developer holds no organization-wide view_billing: no money on the overview
    assert login(acme.developer).get("/o/acme/").context["money"] is None


def test_y_axis_ticks_are_round_values_covering_the_highest_bar():
    from console.views.analytics import nice_ticks

    assert nice_ticks(D(0)) == [D(0)]
    assert nice_ticks(D("0.0022196")) == [D(0), D("0.001"), D("0.002"), D("0.003")]
    assert nice_ticks(D("37")) == [D(0), D(10), D(20), D(30), D(40)]
    assert nice_ticks(D("1.8")) == [D(0), D("0.5"), D("1.0"), D("1.5"), D("2.0")]
    for top in (D("0.000001"), D("7.3"), D("123456")):
        ticks = nice_ticks(top)
        assert ticks[-1] >= top and len(ticks) <= 6
