"""Seed (or inspect) the database the benchmark's gateway runs on, through the project's own
services (no fixtures, no raw SQL). Run in a subprocess with the gateway's environment:

    python bench/seed.py SIMULATOR_URL RUN_ID      # migrate + seed, prints one JSON line
    python bench/seed.py --usage ORG_ID            # usage rows recorded for an organization
    python bench/seed.py --failures ORG_ID         # its failed-request counts, by status and code

Seeding creates one organization (Org > Department > Team > Project, an owner membership and
one API key), a provider ``benchsim`` on the simulator and these models (catalog id
``benchsim/<name>``), each with its deployment(s) on the simulator (upstream knobs in the
model name, docs/simulator.md):

| model | upstream | used for |
|---|---|---|
| bench-fast | gpt-4o-mini | added latency, fast mode |
| bench-20ms | gpt-4o-mini~ttft_ms=20 | throughput at a 20 ms upstream |
| bench-ttft | gpt-4o-mini~tokens=16 | time to first token |
| bench-stream | gpt-4o-mini~tokens=64~token_ms=20 | concurrent streams |
| chaos-<fault> | primary with the fault, a healthy secondary | failover scenarios |
| chaos-all503 | two deployments, both 503 | every candidate down |
| chaos-flap | primary 503 for ``FLAP_S`` after its first request, then healthy | recovery |
| chaos-spread | three deployments, weights 1 / 2 / 7 (answers of 3 / 4 / 5 tokens) | load spread |
| chaos-rpm | one at ``SPREAD_RPM`` requests a minute (weight 9), one unlimited (weight 1) | RPM |
| chaos-cache | two deployments, weights 1 / 1, own caches (answers of 7 / 8 tokens) | caching |
| fb-s<N>[-...] | ``FAILOVERBENCH``: each scenario's faulty primary, its backups | failoverbench |

When the billing app offers budgets (``billing.services.budget_create``), budgets are created
at the organization, member and key layers (limits far above what a run spends) and the
balance is topped up; the JSON says which pieces are wired into the gateway's pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from decimal import Decimal
from typing import Any

import django

FAULTS = {
    "500": "fault=500",
    "429": "fault=429~retry_after=0",
    "reset": "fault=reset",
    "hang": "fault=hang",
    "cut": "fault=cut~after=3~tokens=16",
    "stall": "fault=stall~after=3~stall_ms=1500~tokens=16",
    "malformed": "fault=malformed~after=3~tokens=16",
}
FLAP_S = 12  # chaos-flap: the primary answers 503 for this long after its first request
FLAP_BACKUP_TOKENS = 7  # ... and its backup answers this many tokens (which one served)
SPREAD = {1: 3, 2: 4, 7: 5}  # chaos-spread: weight -> the answer's tokens (who served)
SPREAD_RPM = 40  # chaos-rpm: the limited deployment's rpm_limit
CACHE_PAIR = (("a", 7), ("b", 8))  # chaos-cache: upstream tag -> the answer's tokens
# failoverbench (bench/chaos.py failoverbench): model -> its deployments' upstreams (priority
# in order) and model fields. A primary answers PRIMARY_TOKENS, a backup deployment
# BACKUP_TOKENS, a fallback model FALLBACK_TOKENS: the answer's length says who served. "{id}"
# becomes a per-run fault id (times / for_s count from this run's first request).
PRIMARY_TOKENS, BACKUP_TOKENS, FALLBACK_TOKENS = 5, 9, 11
FB_FLAP_S = 5  # S15: the primary's 503 window
_OK = f"gpt-4o-mini~tokens={PRIMARY_TOKENS}"
_BACKUP = f"gpt-4o-mini~tokens={BACKUP_TOKENS}"
FAILOVERBENCH: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "fb-s1": ((f"{_OK}~fault=500~times=1~id={{id}}", _BACKUP), {}),
    "fb-s2": ((f"{_OK}~fault=503", _BACKUP), {}),
    "fb-s3": ((f"{_OK}~fault=429~retry_after=1", _BACKUP), {}),
    "fb-s4": (("gpt-4o-mini~fault=429~retry_after=30", "gpt-4o-mini~fault=429~retry_after=30"), {}),
    "fb-s5": ((f"{_OK}~fault=reset", _BACKUP), {}),
    "fb-s6": ((f"{_OK}~fault=hang", _BACKUP), {}),
    "fb-s7": ((f"{_OK}~ttft_ms=40000", _BACKUP), {}),
    "fb-s8": ((f"{_OK}~fault=stall~after=0~stall_ms=40000", _BACKUP), {}),
    "fb-s9": (("gpt-4o-mini~fault=cut~after=3~tokens=16", _BACKUP), {}),
    "fb-s10": ((f"{_OK}~fault=malformed~after=0", _BACKUP), {}),
    "fb-s11": (("gpt-4o-mini~fault=no_done~tokens=6",), {}),
    "fb-s12": ((f"{_OK}~fault=context", f"{_OK}~fault=context"), {"context_window": 8192}),
    "fb-s12-large": ((f"gpt-4o-mini~tokens={FALLBACK_TOKENS}",), {"context_window": 200000}),
    "fb-s13": (("gpt-4o-mini~fault=filter",), {}),
    "fb-s14": ((f"{_OK}~fault=503",), {}),
    "fb-s14-noprefill": ((f"{_BACKUP}~fault=no_prefill", f"{_BACKUP}~fault=no_prefill"), {}),
    "fb-s14-last": ((f"gpt-4o-mini~tokens={FALLBACK_TOKENS}",), {}),
    "fb-s15": ((f"{_OK}~fault=503~for_s={FB_FLAP_S}~id={{id}}", _BACKUP), {}),
    "fb-s16": ((f"{_OK}~fault=503", _BACKUP), {}),
}
CREDENTIAL_SECRET = "sk-bench-credential-canary-7f3a"  # noqa: S105 (a canary, checked in logs)


class Simulator:
    """The provider ``benchsim`` on the simulator with its credential; ``model()`` adds a
    catalog model ``benchsim/<name>`` with one deployment per upstream (priority in order)."""

    def __init__(self, simulator_url: str) -> None:
        from routing.crypto import CredentialSecret
        from routing.services import credential_upsert, provider_upsert

        self.base = simulator_url + "/openai/v1"
        self.provider, _ = provider_upsert(
            slug="benchsim",
            name="Bench simulator",
            kind="openai",
            base_url=self.base,
            auth_style="bearer",
        )
        # Named after the encryption key in use: a bench database seeded earlier under another
        # key (another checkout's var/bench-fernet.key) keeps a credential this run could not
        # decrypt.
        tag = hashlib.sha256(os.environ.get("MEGAROUTER_ENCRYPTION_KEYS", "").encode()).hexdigest()
        self.credential, _ = credential_upsert(
            name=f"benchsim-{tag[:12]}",
            kind="api_key",
            secret=CredentialSecret(api_key=CREDENTIAL_SECRET),
        )

    def model(
        self,
        name: str,
        *upstreams: str | tuple[str, dict[str, Any]],
        price_in: str = "0.000002",
        price_out: str = "0.000008",
        cached_in: str | None = None,
        **fields: Any,
    ) -> Any:
        from routing.models import Model
        from routing.services import PriceInput, deployment_upsert, model_create

        found = Model.objects.filter(provider=self.provider, provider_model_name=name).first()
        found = found or model_create(
            provider=self.provider,
            provider_model_name=name,
            price=PriceInput(
                input_per_token=Decimal(price_in),
                output_per_token=Decimal(price_out),
                cached_input_per_token=Decimal(cached_in) if cached_in else None,
            ),
            fields={"mode": "chat", "supports_tools": True, "quality_tier": 3, **fields},
        )
        for index, spec in enumerate(upstreams):
            # a bare upstream: the next priority; (upstream, fields): those deployment fields
            upstream, extra = (spec, {"priority": index}) if isinstance(spec, str) else spec
            deployment_upsert(
                name=f"benchsim-{name}-{index}",
                model=found,
                base_url=self.base,
                provider_model_name=upstream,
                credential=self.credential,
                **extra,
            )
        return found


class Tenant:
    """An organization ``slug`` (Org > dept > team > proj) with its owner (password
    ``<slug>-pw``), the owner's membership at the root and one API key on the project."""

    def __init__(self, slug: str) -> None:
        from django.contrib.auth import get_user_model

        from orgs import services
        from orgs.audit import Actor
        from orgs.models import Membership, Node

        actor = Actor.system()
        self.user = get_user_model().objects.create_user(username=slug, password=f"{slug}-pw")
        self.org = services.organization_create(
            actor=actor, name=slug.title(), slug=slug, owner=self.user
        )
        node = Node.objects.get(organization=self.org, parent__isnull=True)
        self.membership = Membership.objects.get(user=self.user, node=node)
        self.nodes = {}
        for level in ("dept", "team", "proj"):
            node = services.node_create(actor=actor, parent=node, name=level, slug=level)
            self.nodes[level] = node
        self.key = services.api_key_create(
            actor=actor, project=node, membership=self.membership, name="bench"
        )


def seed(simulator_url: str, run_id: str) -> dict[str, Any]:
    from django.core.management import call_command

    from orgs.audit import Actor

    call_command("migrate", verbosity=0, interactive=False)
    actor = Actor.system()
    t = Tenant(f"bench-{run_id}")
    org, membership, created = t.org, t.membership, t.key

    sim = Simulator(simulator_url)
    sim.model("bench-fast", "gpt-4o-mini")
    # the `auto` path (``auto_key``): the same fast upstream at a tenth of the price, so the
    # routing decision has two models to weigh
    sim.model("bench-fast-mini", "gpt-4o-mini", price_in="0.0000002", price_out="0.0000008")
    sim.model("bench-20ms", "gpt-4o-mini~ttft_ms=20")
    sim.model("bench-ttft", "gpt-4o-mini~tokens=16")
    sim.model("bench-stream", "gpt-4o-mini~tokens=64~token_ms=20")
    for name, knobs in FAULTS.items():
        healthy = "gpt-4o-mini~tokens=16" if "tokens=16" in knobs else "gpt-4o-mini"
        sim.model(f"chaos-{name}", f"gpt-4o-mini~{knobs}~id=chaos-{name}-{run_id}", healthy)
    sim.model("chaos-all503", "gpt-4o-mini~fault=503~id=a503", "gpt-4o-mini~fault=503~id=b503")
    sim.model(
        "chaos-flap",
        f"gpt-4o-mini~fault=503~for_s={FLAP_S}~id=chaos-flap-{run_id}",
        f"gpt-4o-mini~tokens={FLAP_BACKUP_TOKENS}",
    )

    for name, (upstreams, fields) in FAILOVERBENCH.items():
        sim.model(name, *(u.format(id=f"{name}-{run_id}") for u in upstreams), **fields)

    # load-spread: one priority, weights 1 / 2 / 7, each deployment told apart by its answer
    # length; chaos-rpm: a limited deployment (weight 9, SPREAD_RPM a minute) and a backup
    sim.model(
        "chaos-spread",
        *((f"gpt-4o-mini~tokens={tokens}", {"weight": w}) for w, tokens in SPREAD.items()),
    )
    sim.model(
        "chaos-rpm",
        ("gpt-4o-mini~tokens=5", {"weight": 9, "rpm_limit": SPREAD_RPM}),
        ("gpt-4o-mini~tokens=6", {"weight": 1}),
    )

    # conversations: one model with a cached-input price, two equally weighted deployments on
    # upstream models of their own (separate simulator prompt caches), told apart by length
    sim.model(
        "chaos-cache",
        *((f"gpt-cache-{tag}~tokens={tokens}", {"weight": 1}) for tag, tokens in CACHE_PAIR),
        cached_in="0.0000002",
    )

    from orgs import services as org_services

    auto = org_services.api_key_create(
        actor=actor,
        project=t.nodes["proj"],
        membership=membership,
        name="bench-auto",
        allowed_models=["benchsim/bench-fast", "benchsim/bench-fast-mini"],
    )
    from billing import services as billing

    billing.transfer_record(
        actor=actor, organization=org, amount="1000000", reference=f"bench {run_id}"
    )
    budgets: list[str] = []
    for scope, scope_id in (
        ("organization", None),
        ("member", membership.pk),
        ("key", created.api_key.pk),
    ):
        billing.budget_create(
            actor=actor,
            organization=org,
            scope=scope,
            scope_id=scope_id,
            period="monthly",
            limit_usd="100000",
        )
        budgets.append(scope)
    return {
        "key": created.raw_key,
        "key_id": created.api_key.pk,
        "auto_key": auto.raw_key,  # model "auto" over bench-fast and bench-fast-mini
        "organization_id": org.pk,
        "budgets": budgets,
        "credential_secret": CREDENTIAL_SECRET,
        "simulator_base": sim.base,  # the simulator's OpenAI base URL (chaos adds models on it)
    }


def usage(organization_id: int) -> dict[str, Any]:
    """Usage rows of one organization: pending events and posted records."""
    from billing.models import UsageEvent, UsageRecord

    records = list(
        UsageRecord.objects.filter(organization_id=organization_id).values_list(
            "request_id", flat=True
        )
    )
    events = list(
        UsageEvent.objects.filter(organization_id=organization_id).values_list(
            "request_id", flat=True
        )
    )
    # request id -> [cost, deployment]: a pending event's (its record-to-be's data), then the
    # posted record's
    costs = {
        request_id: [str(cost), (data or {}).get("deployment", "")]
        for request_id, cost, data in UsageEvent.objects.filter(
            organization_id=organization_id
        ).values_list("request_id", "cost", "data")
    }
    costs.update(
        (request_id, [str(cost), deployment])
        for request_id, cost, deployment in UsageRecord.objects.filter(
            organization_id=organization_id
        ).values_list("request_id", "cost", "deployment")
    )
    return {"available": True, "records": records, "events": events, "costs": costs}


def failures(organization_id: int) -> dict[str, int]:
    """The organization's failed-request counts as the analytics read them: "status code" ->
    requests (billing.analytics.selectors.failures_breakdown over every hour)."""
    import datetime as dt

    from billing.analytics.selectors import AnalyticsQuery, failures_breakdown
    from billing.models import FailedRequestCount

    now = dt.datetime.now(dt.UTC)
    query = AnalyticsQuery(
        start=now - dt.timedelta(days=1),
        end=now + dt.timedelta(hours=1),
        group_by=("status", "code"),
    )
    rows = FailedRequestCount.objects.filter(organization_id=organization_id)
    return {f"{r['status']} {r['code']}": r["failed"] for r in failures_breakdown(rows, query)}


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")
    django.setup()
    if argv[:1] == ["--usage"]:
        print(json.dumps(usage(int(argv[1]))))
    elif argv[:1] == ["--failures"]:
        print(json.dumps(failures(int(argv[1]))))
    else:
        print(json.dumps(seed(argv[0], argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
