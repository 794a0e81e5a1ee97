"""Rollups (exactly once, equal to the records), savings, and the analytics API: values,
permission scoping, table choice, cross-tenant 404s."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from billing.analytics.reference import ReferencePricer
from billing.analytics.rollups import rollup_advance, rollup_rebuild, rollup_watermark
from billing.models import (
    MEASURES,
    MONEY,
    RollupWatermark,
    UsageRecord,
    UsageRollupDay,
    UsageRollupDayKey,
    UsageRollupDayNode,
    UsageRollupDayTeam,
    UsageRollupHour,
)
from orgs import services
from orgs.models import Role
from routing.models import ModelPrice
from tests.billing.analytics_helpers import make_tenant, record, reference_catalog, team_lead
from tests.orgs.factories import SYSTEM, add_member

pytestmark = pytest.mark.django_db
D = Decimal
UTC = dt.UTC
DAY1 = dt.datetime(2026, 11, 2, tzinfo=UTC)
PERIOD = "from=2026-11-02&to=2026-11-03"

TOTALS = {
    "requests": 4,
    "errors": 1,
    "fallbacks": 1,
    "tokens_in": 3400,
    "tokens_out": 1650,
    "tokens_cached": 500,
    "cost": "0.007305000000",
    "reference_cost": "0.024375000000",
    "cache_lost": "0.000070000000",
    "savings": "0.017070000000",
    "savings_net": "0.017000000000",
    "avg_latency_ms": 266.7,
    "avg_ttft_ms": 80.0,
}


@pytest.fixture
def data():
    reference_catalog()
    a = make_tenant("alpha")
    b = make_tenant("beta")
    rows = [
        record(a, at=DAY1.replace(hour=10, minute=15)),
        record(
            a,
            at=DAY1.replace(hour=10, minute=45),
            model="anthropic/claude-3-5-haiku",
            provider="anthropic",
            tokens_in=2000,
            tokens_out=1000,
            tokens_cached=500,
            cost="0.006000",
            latency_ms=400,
            ttft_ms=None,
        ),
        record(
            a,
            at=DAY1 + dt.timedelta(days=1, hours=23, minutes=30),
            second=True,
            tokens_in=300,
            tokens_out=100,
            cost="0.000105",
            cache_lost="0.00007",  # moved off a cached deployment: 70 us of discount lost
            status="upstream_error",
            latency_ms=None,
            fallback_used=True,
        ),
        record(
            a,
            at=DAY1 + dt.timedelta(days=1, hours=1),
            model="openai/gpt-4o",
            tokens_in=100,
            tokens_out=50,
            cost="0.00075",
        ),
        record(b, at=DAY1.replace(hour=11), cost="5.000000", tokens_in=7, tokens_out=7),
    ]
    assert rollup_advance(lag_seconds=0) == 5
    return {"a": a, "b": b, "rows": rows}


def login(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def sums(model, org) -> dict:
    agg = model.objects.filter(organization=org).aggregate(**{m: Sum(m) for m in MEASURES})
    return {m: (D(v) if m in MONEY else v) for m, v in agg.items()}


EXPECTED_SUMS = {
    "requests": 4,
    "errors": 1,
    "fallbacks": 1,
    "attempts": 5,
    "tokens_in": 3400,
    "tokens_out": 1650,
    "tokens_cached": 500,
    "cost": D("0.007305"),
    "reference_cost": D("0.024375"),
    "cache_lost": D("0.00007"),
    "latency_ms_sum": 800,
    "latency_count": 3,
    "ttft_ms_sum": 240,
    "ttft_count": 3,
}


# ---------------------------------------------------------------- rollups


def test_reference_cost_per_record_uses_cached_price():
    reference_catalog()
    pricer = ReferencePricer()
    cost = pricer.cost(
        when=DAY1, tokens_in=2000, tokens_out=1000, tokens_cached=500, actual=D("0.006")
    )
    assert cost == D("0.014375")
    before_any_price = dt.datetime(2025, 6, 1, tzinfo=UTC)  # priced at the first version
    assert pricer.cost(
        when=before_any_price, tokens_in=10, tokens_out=10, tokens_cached=0, actual=D("0.42")
    ) == D("0.000125")
    ModelPrice.objects.create(
        model=ModelPrice.objects.get().model,
        effective_from=DAY1 + dt.timedelta(days=1),
        input_per_token=D("0.000001"),
        output_per_token=D("0.000004"),
        source="test",
    )
    pricer = ReferencePricer()  # a price change: each request at the version of its time
    assert pricer.cost(when=DAY1, tokens_in=10, tokens_out=10, tokens_cached=0, actual=D("1")) == D(
        "0.000125"
    )
    assert pricer.cost(
        when=DAY1 + dt.timedelta(days=2),
        tokens_in=10,
        tokens_out=10,
        tokens_cached=4,
        actual=D("1"),
    ) == D("0.00005")  # no cached price in this version: the input price


def test_no_reference_price_means_no_savings(settings):
    settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL = "nobody/nothing"
    assert ReferencePricer().cost(
        when=DAY1, tokens_in=10, tokens_out=10, tokens_cached=0, actual=D("0.42")
    ) == D("0.42")


def test_sql_and_python_reference_costs_agree_across_price_versions(data):
    from billing.analytics.reference import reference_cost_expression, reference_models_of

    ModelPrice.objects.create(
        model=ModelPrice.objects.get().model,
        effective_from=DAY1 + dt.timedelta(days=1),
        input_per_token=D("0.000001"),
        output_per_token=D("0.000004"),
        source="test",
    )
    mixed_references(data["a"])
    pricer = ReferencePricer()
    records = UsageRecord.objects.filter(organization=data["a"].org)
    models = reference_models_of(records)
    assert models == [CLAUDE_REF, "nobody/unpriced", "openai/gpt-4o"]
    rows = records.annotate(ref=reference_cost_expression(models=models))
    for r in rows:
        expected = pricer.cost(
            when=r.created_at,
            tokens_in=r.tokens_in,
            tokens_out=r.tokens_out,
            tokens_cached=r.tokens_cached,
            actual=r.cost,
            model=r.reference_model,
        )
        assert D(r.ref).quantize(D("1e-12")) == expected.quantize(D("1e-12")), r.request_id


# ---------------------------------------------------------------- a mix of reference models

CLAUDE_REF = "anthropic/claude-ref"


def claude_reference() -> None:
    """anthropic/claude-ref: $3 / $15 per million ($0.30 cached) until DAY1 + 1 day, then
    $1 / $5 (no cached price)."""
    from tests.routing.factories import ModelFactory, ProviderFactory

    model = ModelFactory(
        provider=ProviderFactory(slug="anthropic"), provider_model_name="claude-ref", price=False
    )
    for start, p_in, p_out, p_cached in (
        (dt.datetime(2026, 1, 1, tzinfo=UTC), "0.000003", "0.000015", "0.0000003"),
        (DAY1 + dt.timedelta(days=1), "0.000001", "0.000005", None),
    ):
        ModelPrice.objects.create(
            model=model,
            effective_from=start,
            input_per_token=D(p_in),
            output_per_token=D(p_out),
            cached_input_per_token=D(p_cached) if p_cached else None,
            source="test",
        )


def mixed_references(a):
    """Three more records of tenant a: two on claude-ref (one per price version), one on a
    model without any price (reference = actual), plus an explicit "" (= the default)."""
    claude_reference()
    made = [
        record(a, at=DAY1.replace(hour=13), tokens_in=1000, tokens_out=100, tokens_cached=200),
        record(a, at=DAY1 + dt.timedelta(days=1, hours=2), second=True, tokens_in=10),
        record(a, at=DAY1.replace(hour=14), cost="0.25"),
        record(a, at=DAY1.replace(hour=15), tokens_in=20, tokens_out=2),
    ]
    for r, ref in zip(made, (CLAUDE_REF, CLAUDE_REF, "nobody/unpriced", ""), strict=True):
        r.reference_model = ref
        r.save(update_fields=["reference_model"])
    return made


# By hand: 800 x $3e-6 + 200 x $0.3e-6 + 100 x $15e-6 (first claude version);
# 10 x $1e-6 + 500 x $5e-6 (second version, the next day); the actual cost (no price);
# 20 x $2.5e-6 + 2 x $10e-6 (the default, openai/gpt-4o).
MIXED_REFERENCE = {
    CLAUDE_REF: D("0.0024") + D("0.00006") + D("0.0015") + D("0.00001") + D("0.0025"),
    "nobody/unpriced": D("0.25"),
    "openai/gpt-4o": D("0.024375") + D("0.00005") + D("0.00002"),
}
MIXED_COST = {CLAUDE_REF: D("0.0009"), "nobody/unpriced": D("0.25"), "openai/gpt-4o": D("0.007755")}


def test_each_record_is_priced_on_its_own_reference_model(data):
    a = data["a"]
    mixed_references(a)
    assert rollup_advance(lag_seconds=0) == 4
    assert sums(UsageRollupDayTeam, a.org)["reference_cost"] == sum(MIXED_REFERENCE.values())
    rows = (
        UsageRollupDay.objects.filter(organization=a.org)
        .values("reference_model")
        .annotate(c=Sum("cost"), r=Sum("reference_cost"))
        .order_by("reference_model")
    )
    assert {x["reference_model"]: (x["c"], x["r"]) for x in rows} == {
        m: (MIXED_COST[m], MIXED_REFERENCE[m]) for m in MIXED_REFERENCE
    }
    for table in TABLES:  # every table: the null and "" records are under the default
        assert set(
            table.objects.filter(organization=a.org).values_list("reference_model", flat=True)
        ) == set(MIXED_REFERENCE), table


def test_rebuild_and_incremental_agree_on_a_mix_of_reference_models(data):
    a = data["a"]
    mixed_references(a)
    assert rollup_advance(lag_seconds=0) == 4
    incremental = {t: _normalized(t, a.org) for t in TABLES}
    rollup_rebuild(organization_id=a.org.pk, start=DAY1, end=DAY1 + dt.timedelta(days=2))
    assert {t: _normalized(t, a.org) for t in incremental} == incremental


def test_api_names_the_reference_models_and_splits_savings_by_them(data):
    a = data["a"]
    mixed_references(a)
    rollup_advance(lag_seconds=0)
    client = login(a.tree.owner)
    total_ref = sum(MIXED_REFERENCE.values())
    total_cost = sum(MIXED_COST.values())
    for query, source in (
        (PERIOD, "usagerollupdayteam"),
        ("from=2026-11-02T00:00:00Z&to=2026-11-03T23:59:59Z", "usagerecord"),
    ):
        body = client.get(f"/api/orgs/alpha/analytics/summary/?{query}").json()
        assert body["source"] == source
        assert body["reference_model"] == "openai/gpt-4o"  # the default
        assert body["reference_models"] == sorted(MIXED_REFERENCE)
        assert D(body["totals"]["reference_cost"]) == total_ref
        assert D(body["totals"]["savings"]) == total_ref - total_cost
        rows = client.get(
            f"/api/orgs/alpha/analytics/breakdown/?{query}&group_by=reference_model"
        ).json()["rows"]
        assert {r["reference_model"]: (D(r["cost"]), D(r["reference_cost"])) for r in rows} == {
            m: (MIXED_COST[m], MIXED_REFERENCE[m]) for m in MIXED_REFERENCE
        }, source
        only = client.get(
            f"/api/orgs/alpha/analytics/summary/?{query}&reference_model=openai/gpt-4o"
        ).json()
        assert only["reference_models"] == ["openai/gpt-4o"]
        assert D(only["totals"]["reference_cost"]) == MIXED_REFERENCE["openai/gpt-4o"]
        assert only["totals"]["requests"] == 5  # the 4 records without one, and the ""
    # the other tenant's savings are its own
    body = login(data["b"].tree.owner).get(f"/api/orgs/beta/analytics/summary/?{PERIOD}").json()
    assert body["reference_models"] == ["openai/gpt-4o"]
    assert body["totals"]["requests"] == 1


TABLES = (
    UsageRollupHour,
    UsageRollupDay,
    UsageRollupDayKey,
    UsageRollupDayNode,
    UsageRollupDayTeam,
)


@pytest.mark.parametrize("table", TABLES)
def test_every_rollup_table_sums_to_the_records(data, table):
    assert sums(table, data["a"].org) == EXPECTED_SUMS
    assert sums(table, data["b"].org)["cost"] == D("5")


def test_rollup_grain_rows(data):
    org = data["a"].org
    assert UsageRollupHour.objects.filter(organization=org).count() == 4  # 2 models at 10:00
    day_node = UsageRollupDayNode.objects.filter(organization=org).order_by("bucket", "cost")
    assert [(r.bucket, r.model, r.requests) for r in day_node] == [
        (DAY1, "openai/gpt-4o-mini", 1),
        (DAY1, "anthropic/claude-3-5-haiku", 1),
        (DAY1 + dt.timedelta(days=1), "openai/gpt-4o-mini", 1),
        (DAY1 + dt.timedelta(days=1), "openai/gpt-4o", 1),
    ]
    record(data["a"], at=DAY1.replace(hour=10, minute=50), cost="0.000010")
    assert rollup_advance(lag_seconds=0) == 1
    hour = UsageRollupHour.objects.get(
        organization=org, bucket=DAY1.replace(hour=10), model="openai/gpt-4o-mini"
    )
    assert (hour.requests, hour.cost, hour.team_id) == (2, D("0.00046"), data["a"].tree.team.pk)
    team_day = UsageRollupDayTeam.objects.get(
        organization=org, bucket=DAY1, model="openai/gpt-4o-mini"
    )
    assert (team_day.requests, team_day.tokens_in) == (2, 2000)
    first_key_day = UsageRollupDayKey.objects.get(
        organization=org, bucket=DAY1, key_id=data["a"].world.key_id
    )
    assert (first_key_day.requests, first_key_day.cost) == (3, D("0.00646"))  # 3 models
    third = UsageRollupDay.objects.get(organization=org, team_id=data["a"].team2.pk)
    assert (third.key_id, third.member_id, third.status, third.errors) == (
        data["a"].key2_id,
        data["a"].member2_id,
        "upstream_error",
        1,
    )


def test_advance_again_adds_nothing_and_new_records_once(data):
    a = data["a"]
    before = {t: sums(t, a.org) for t in TABLES}
    assert rollup_advance(lag_seconds=0) == 0
    assert rollup_advance(lag_seconds=0) == 0
    assert {t: sums(t, a.org) for t in before} == before

    new = record(a, at=DAY1.replace(hour=10, minute=20), cost="0.001", tokens_in=10)
    assert rollup_advance(lag_seconds=3600) == 0  # too fresh: waits out the lag
    assert rollup_watermark() == new.pk - 1
    assert rollup_advance(lag_seconds=0) == 1
    assert rollup_advance(lag_seconds=0) == 0
    for table in before:
        after = sums(table, a.org)
        assert after["requests"] == 5
        assert after["cost"] == D("0.008305")
        assert after["tokens_in"] == 3410
    assert RollupWatermark.objects.get().last_id == new.pk


def _rows(table, org):
    fields = ["bucket", *table.DIMS, *MEASURES]
    return sorted(
        (
            tuple(str(v) if isinstance(v, Decimal) else v for v in row)
            for row in table.objects.filter(organization=org).values_list(*fields)
        ),
        key=repr,
    )


def _normalized(table, org):
    fields = ["bucket", *table.DIMS, *MEASURES]
    out = []
    for row in table.objects.filter(organization=org).values_list(*fields):
        out.append(tuple(D(v).normalize() if isinstance(v, Decimal) else v for v in row))
    return sorted(out, key=repr)


def test_rebuild_gives_the_incremental_rows_and_skips_records_above_the_watermark(data):
    a = data["a"]
    incremental = {t: _normalized(t, a.org) for t in TABLES}
    pending = record(a, at=DAY1.replace(hour=12), cost="9")  # above the watermark
    written = rollup_rebuild(organization_id=a.org.pk, start=DAY1, end=DAY1 + dt.timedelta(days=2))
    assert written == 4 + 4 + 4 + 4 + 3  # day-key: one key twice on the first day
    assert {t: _normalized(t, a.org) for t in incremental} == incremental
    assert rollup_advance(lag_seconds=0) == 1
    assert sums(UsageRollupDay, a.org)["cost"] == D("9.007305")
    assert pending.pk == rollup_watermark()


# ---------------------------------------------------------------- API


def test_summary_exact_totals_from_the_day_table(data):
    client = login(data["a"].tree.owner)
    response = client.get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}")
    assert response.status_code == 200
    body = response.json()
    assert body["totals"] == TOTALS
    assert body["source"] == "usagerollupdayteam"
    assert body["reference_model"] == "openai/gpt-4o"
    assert body["from"] == "2026-11-02T00:00:00+00:00"
    assert body["to"] == "2026-11-04T00:00:00+00:00"


@pytest.mark.parametrize(
    ("query", "source"),
    [
        (PERIOD, "usagerollupdayteam"),
        (f"{PERIOD}&project=PROJECTS", "usagerollupdaynode"),
        (f"{PERIOD}&key=KEYS", "usagerollupdaykey"),
        (
            f"{PERIOD}&key=KEYS&model=openai/gpt-4o-mini,openai/gpt-4o,anthropic/claude-3-5-haiku",
            "usagerollupday",
        ),
        (f"{PERIOD}&status=ok,upstream_error", "usagerollupday"),
        ("from=2026-11-02T00:00:00Z&to=2026-11-04T00:00:00Z&bucket=hour", "usagerolluphour"),
        ("from=2026-11-02T00:00:00Z&to=2026-11-03T23:59:59.999999Z", "usagerecord"),
        (
            "from=2026-11-02T00:00:00Z&to=2026-11-04T00:00:00Z&member=MEMBERS&bucket=hour",
            "usagerecord",
        ),
    ],
)
def test_every_source_gives_the_same_totals(data, query, source):
    a = data["a"]
    query = query.replace("KEYS", f"{a.world.key_id},{a.key2_id}")
    query = query.replace("MEMBERS", f"{a.world.member_id},{a.member2_id}")
    query = query.replace("PROJECTS", f"{a.tree.project.pk},{a.project2.pk}")
    client = login(a.tree.owner)
    endpoint = "timeseries" if "bucket=" in query else "summary"
    body = client.get(f"/api/orgs/alpha/analytics/{endpoint}/?{query}").json()
    assert body["source"] == source
    if endpoint == "summary":
        assert body["totals"] == TOTALS
    else:
        assert sum(D(p["cost"]) for p in body["points"]) == D("0.007305")
        assert sum(p["requests"] for p in body["points"]) == 4
        assert [p["bucket"] for p in body["points"]] == [
            "2026-11-02T10:00:00+00:00",
            "2026-11-03T01:00:00+00:00",
            "2026-11-03T23:00:00+00:00",
        ]


def test_breakdown_team_by_model(data):
    a = data["a"]
    body = (
        login(a.tree.owner)
        .get(f"/api/orgs/alpha/analytics/breakdown/?{PERIOD}&group_by=team,model")
        .json()
    )
    rows = [
        (r["team"], r["team_name"], r["model"], r["requests"], r["cost"], r["savings"])
        for r in body["rows"]
    ]
    t1, t2 = a.tree.team.pk, a.team2.pk
    assert rows == [
        (t1, "Platform", "anthropic/claude-3-5-haiku", 1, "0.006000000000", "0.008375000000"),
        (t1, "Platform", "openai/gpt-4o", 1, "0.000750000000", "0.000000000000"),
        (t1, "Platform", "openai/gpt-4o-mini", 1, "0.000450000000", "0.007050000000"),
        (t2, "Research", "openai/gpt-4o-mini", 1, "0.000105000000", "0.001645000000"),
    ]


def test_filters_on_model_and_status(data):
    client = login(data["a"].tree.owner)
    body = client.get(
        f"/api/orgs/alpha/analytics/summary/?{PERIOD}&model=openai/gpt-4o-mini&status=ok"
    ).json()
    assert (body["totals"]["requests"], body["totals"]["cost"]) == (1, "0.000450000000")


def test_timeseries_day_buckets_in_the_organizations_zone(data):
    a = data["a"]
    a.org.time_zone = "America/New_York"  # UTC-5 in November
    a.org.save(update_fields=["time_zone"])
    body = (
        login(a.tree.owner)
        .get("/api/orgs/alpha/analytics/timeseries/?from=2026-11-02&to=2026-11-03&bucket=day")
        .json()
    )
    assert body["source"] == "usagerolluphour"
    assert [(p["bucket"], p["requests"], p["cost"]) for p in body["points"]] == [
        ("2026-11-02T00:00:00-05:00", 3, "0.007200000000"),  # 10:15Z, 10:45Z, 01:00Z on the 3rd
        ("2026-11-03T00:00:00-05:00", 1, "0.000105000000"),  # 23:30Z = 18:30 local
    ]


def test_team_lead_sees_only_their_subtree(data):
    a = data["a"]
    lead = team_lead(a, second=True)
    client = login(lead.user)
    body = client.get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}").json()
    assert (body["totals"]["requests"], body["totals"]["cost"]) == (1, "0.000105000000")
    assert body["source"] == "usagerollupdayteam"  # filtered on team_id
    rows = client.get(f"/api/orgs/alpha/analytics/breakdown/?{PERIOD}&group_by=team").json()["rows"]
    assert [(r["team"], r["cost"]) for r in rows] == [(a.team2.pk, "0.000105000000")]
    other = client.get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}&team={a.tree.team.pk}")
    assert other.json()["totals"]["requests"] == 0


def _token_client(node, scopes):
    raw = services.service_token_create(
        actor=SYSTEM, node=node, name="analytics-bot", scopes=scopes
    ).raw_token
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def test_a_service_token_reads_analytics_of_its_subtree_only(data):
    a = data["a"]
    org_wide = _token_client(a.tree.root, ["analytics:read"])
    body = org_wide.get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}").json()
    assert body["totals"] == TOTALS
    team = _token_client(a.team2, ["analytics:read"])
    body = team.get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}").json()
    assert (body["totals"]["requests"], body["totals"]["cost"]) == (1, "0.000105000000")
    assert body["source"] == "usagerollupdayteam"  # filtered on team_id, as a team lead's
    project = _token_client(a.tree.project, ["analytics:read"])
    body = project.get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}").json()
    assert body["source"] == "usagerollupdaynode"
    assert (body["totals"]["requests"], body["totals"]["cost"]) == (3, "0.007200000000")
    response = _token_client(a.tree.root, ["usage:read"]).get(
        f"/api/orgs/alpha/analytics/summary/?{PERIOD}"
    )
    assert response.status_code == 403 and response.json()["code"] == "missing_scope"
    assert (
        _token_client(a.tree.root, ["analytics:read"])
        .get(f"/api/orgs/beta/analytics/summary/?{PERIOD}")
        .status_code
        == 404
    )


def test_project_viewer_sees_their_project_from_the_project_table(data):
    a = data["a"]
    viewer = add_member(a.tree.project, Role.VIEWER)
    body = login(viewer.user).get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}").json()
    assert body["source"] == "usagerollupdaynode"
    assert (body["totals"]["requests"], body["totals"]["cost"]) == (3, "0.007200000000")


def test_billing_manager_sees_the_organization_and_developer_is_refused(data):
    a = data["a"]
    manager = add_member(a.tree.root, Role.BILLING_MANAGER)
    body = login(manager.user).get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}").json()
    assert body["totals"] == TOTALS
    developer = add_member(a.tree.team, Role.DEVELOPER)
    response = login(developer.user).get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}")
    assert response.status_code == 403


@pytest.mark.parametrize("endpoint", ["summary", "breakdown", "timeseries"])
def test_other_organization_is_404_and_never_counted(data, endpoint):
    a, b = data["a"], data["b"]
    client = login(a.tree.owner)
    response = client.get(f"/api/orgs/beta/analytics/{endpoint}/?{PERIOD}&group_by=team")
    assert response.status_code == 404
    assert client.get("/api/orgs/nope/analytics/summary/").status_code == 404
    # filters naming the other organization's ids find nothing
    body = client.get(
        f"/api/orgs/alpha/analytics/summary/?{PERIOD}&key={b.world.key_id}&project={b.tree.project.pk}"
    ).json()
    assert body["totals"]["requests"] == 0
    assert UsageRecord.objects.filter(organization=b.org).count() == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("group_by=team,model,key", "group_by"),
        ("group_by=colour", "group_by"),
        ("bucket=week", "bucket"),
        ("days=0", "days"),
        ("from=2026-11-02", "from"),
        ("from=yesterday&to=today", "from"),
        ("key=abc", "key"),
        ("days=40&bucket=hour", "bucket"),
        ("from=2026-11-03&to=2026-11-02", "to"),
    ],
)
def test_bad_parameters_answer_400_naming_the_field(data, query, field):
    response = login(data["a"].tree.owner).get(f"/api/orgs/alpha/analytics/timeseries/?{query}")
    assert response.status_code == 400
    assert field in response.json()


def test_timeseries_defaults_to_day_buckets(data):
    body = (
        login(data["a"].tree.owner)
        .get(f"/api/orgs/alpha/analytics/timeseries/?{PERIOD}&group_by=team")
        .json()
    )
    assert body["bucket"] == "day"
    t1, t2 = data["a"].tree.team.pk, data["a"].team2.pk
    assert [(p["bucket"], p["team"], p["requests"]) for p in body["points"]] == [
        ("2026-11-02T00:00:00+00:00", t1, 2),
        ("2026-11-03T00:00:00+00:00", t1, 1),
        ("2026-11-03T00:00:00+00:00", t2, 1),
    ]


def test_breakdown_needs_a_dimension(data):
    response = login(data["a"].tree.owner).get(f"/api/orgs/alpha/analytics/breakdown/?{PERIOD}")
    assert response.status_code == 400


def test_query_count_is_pinned(data):
    client = login(data["a"].tree.owner)
    client.get(f"/api/orgs/alpha/analytics/summary/?{PERIOD}")  # warm caches
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(f"/api/orgs/alpha/analytics/breakdown/?{PERIOD}&group_by=team,key")
    assert response.status_code == 200
    # session, user, organization, permission, org-wide check, the reference models, the
    # aggregate, team and key names
    assert len(ctx.captured_queries) == 9, [q["sql"][:80] for q in ctx.captured_queries]
