"""Redis backend specifics: counters rebuilt from the database after a restart, failing closed
while another process rebuilds, and exactness across two processes sharing Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from billing import services
from billing.admission import HoldRequest, UsageEventData
from billing.errors import AdmissionUnavailable
from billing.models import LedgerEntry, UsageRecord
from tests.billing.admission_helpers import observed, reserve_held, run
from tests.billing.factories import budget, make_world

D = Decimal
ROOT = Path(__file__).resolve().parents[2]


def rid() -> str:
    return uuid.uuid4().hex


@pytest.mark.django_db
def test_counters_lost_are_rebuilt_from_the_database(rbackend):
    w = make_world("acme", balance="20")
    org_b = budget(w, "organization", "10")
    key_b = budget(w, "key", "2", period="daily")
    budgets = [org_b, key_b]

    async def traffic():
        # one settled and posted, one settled not posted, one still open (persisted)
        a = await rbackend.reserve(rid(), w.ctx(), HoldRequest.fixed(D("0.5"), 10))
        await rbackend.settle(a, D("0.3"), UsageEventData())
        return a

    run(traffic)
    services.usage_events_post()

    async def more():
        b = await rbackend.reserve(rid(), w.ctx(), HoldRequest.fixed(D("0.4"), 10))
        await rbackend.settle(b, D("0.25"), UsageEventData())
        c = await rbackend.reserve(rid(), w.ctx(), HoldRequest.fixed(D("0.7"), 10))
        await c.extra["persist"]
        return c

    open_res = run(more)
    live = observed(rbackend, w.org, budgets)
    assert live == {"available": D("18.75"), org_b.pk: D("1.25"), key_b.pk: D("1.25")}

    # Redis "restarts": every key of ours is gone
    keys = list(rbackend.sync.scan_iter(match=f"{rbackend.prefix}:*"))
    rbackend.sync.delete(*keys)
    assert rbackend.sync.get(rbackend.keys(w.org.pk).epoch) is None
    # the next reserve rebuilds before admitting; the rebuilt state equals what was lost
    run(rbackend.reserve, rid(), w.ctx(), HoldRequest.fixed(D("0.05"), 10))
    assert rbackend.rebuilds >= 1
    assert observed(rbackend, w.org, budgets) == {
        "available": D("18.70"),
        org_b.pk: D("1.30"),
        key_b.pk: D("1.30"),
    }
    # the open reservation survived the restart: settling it moves the rebuilt counters
    run(rbackend.settle, open_res, D("0.1"), UsageEventData())
    assert observed(rbackend, w.org, budgets)[key_b.pk] == D("0.70")


@pytest.mark.django_db
def test_epoch_bump_rebuilds_to_the_database_state(rbackend):
    w = make_world("acme", balance="5")
    b = budget(w, "team", "3")
    reserve_held(rbackend, rid(), w.ctx(), HoldRequest.fixed(D("1"), 10))
    k = rbackend.keys(w.org.pk)
    before = observed(rbackend, w.org, [b])
    # counters drift (e.g. an operator poked them); dropping the epoch restores the truth
    rbackend.sync.set(k.budget(b.pk, observed_start(b, w)), 0)
    rbackend.invalidate(w.org.pk)
    assert rbackend.rebuild_sync(w.org.pk)
    assert observed(rbackend, w.org, [b]) == before == {"available": D("4"), b.pk: D("1")}


def observed_start(b, w):
    from django.utils import timezone

    from billing.periods import period_start

    return period_start(b.period, timezone.now(), w.org.time_zone)


@pytest.mark.django_db
def test_fails_closed_while_another_process_rebuilds(rbackend, monkeypatch):
    w = make_world("acme", balance="5")
    k = rbackend.keys(w.org.pk)
    rbackend.sync.set(k.lock, "another-process", px=30_000)
    monkeypatch.setattr("billing.admission.redis.REBUILD_WAIT", 0.2)
    with pytest.raises(AdmissionUnavailable) as err:
        run(rbackend.reserve, rid(), w.ctx(), HoldRequest.fixed(D("0.01"), 10))
    assert err.value.http_status == 503
    assert rbackend.sync.get(k.epoch) is None
    assert observed_nothing_held(w)


def observed_nothing_held(w) -> bool:
    from billing.models import Reservation

    return not Reservation.objects.filter(organization_id=w.org.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_two_processes_sharing_redis_never_exceed_the_limit(rbackend):
    """200 concurrent requests from two processes at $0.0001 against $0.01: exactly 100."""
    w = make_world("burst", balance="50")
    budget(w, "key", "0.01")
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "BILLING_REDIS_PREFIX": rbackend.prefix,
        "BILLING_ADMISSION_BACKEND": "redis",
    }
    if db.get("PASSWORD"):
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        )
    start = time.time() + 2.5
    cmd = [
        sys.executable,
        str(ROOT / "manage.py"),
        "billing_burst",
        "--key-id",
        str(w.key_id),
        "--requests",
        "100",
        "--cost",
        "0.0001",
        "--start-at",
        str(start),
    ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        for _ in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    admitted = sum(r["admitted"] for r in results)
    assert admitted == 100
    assert sum(r["refused"].get("budget_exceeded", 0) for r in results) == 100
    services.usage_events_post()
    assert UsageRecord.objects.filter(organization=w.org).count() == 100
    charged = -sum(
        LedgerEntry.objects.filter(organization=w.org, kind="usage").values_list(
            "amount", flat=True
        )
    )
    assert charged == D("0.01")


@pytest.mark.django_db
def test_a_settle_racing_a_restart_is_counted_exactly_once(rbackend):
    from billing.admission.base import settle_rows

    w = make_world("acme", balance="10")
    b = budget(w, "key", "5")

    def restart():
        rbackend.sync.delete(*rbackend.sync.scan_iter(match=f"{rbackend.prefix}:*"))

    # 1. the usage event reached the database, then Redis restarted before the Redis half
    a = reserve_held(rbackend, rid(), w.ctx(), HoldRequest.fixed(D("0.5"), 10))
    settle_rows(a, D("0.2"), UsageEventData(), db_held=False)
    restart()
    assert rbackend.rebuild_sync(w.org.pk)
    assert observed(rbackend, w.org, [b])[b.pk] == D("0.2")  # counted from the event
    assert run(rbackend.settle_counters, a, D("0.2"), 0)
    assert observed(rbackend, w.org, [b])[b.pk] == D("0.2")  # not twice

    # 2. Redis restarted while the request was in flight: the rebuild holds its reservation
    c = reserve_held(rbackend, rid(), w.ctx(), HoldRequest.fixed(D("0.4"), 10))
    restart()
    assert rbackend.rebuild_sync(w.org.pk)
    assert observed(rbackend, w.org, [b])[b.pk] == D("0.6")
    settle_rows(c, D("0.1"), UsageEventData(), db_held=False)
    assert run(rbackend.settle_counters, c, D("0.1"), 0)
    assert observed(rbackend, w.org, [b])[b.pk] == D("0.3")

    # 3. the Redis half arrives while the counters are gone: it waits for (runs) the rebuild
    d = reserve_held(rbackend, rid(), w.ctx(), HoldRequest.fixed(D("0.3"), 10))
    settle_rows(d, D("0.3"), UsageEventData(), db_held=False)
    restart()
    assert run(rbackend.settle_counters, d, D("0.3"), 0)
    assert observed(rbackend, w.org, [b]) == {"available": D("9.4"), b.pk: D("0.6")}


@pytest.mark.django_db
def test_settle_with_redis_unreachable_keeps_the_event_and_reconcile_finishes_it(
    rbackend, monkeypatch
):
    """The provider answered, then Redis went away: settle must not fail the request. The
    usage event is in the database; the Redis hold stays until its deadline, and
    reconciliation settles it from the database, exactly once."""
    import datetime as dt

    import redis.asyncio as redis_async
    from django.utils import timezone

    from billing.models import UsageEvent

    w = make_world("redisgone", balance="20")
    key_b = budget(w, "key", "2", period="daily")

    async def reserve():
        res = await rbackend.reserve(rid(), w.ctx(), HoldRequest.fixed(D("0.5"), 10))
        await res.extra["persist"]
        return res

    res = run(reserve)
    dead = redis_async.Redis.from_url(
        "redis://127.0.0.1:1/0", socket_connect_timeout=0.2, decode_responses=True
    )
    real_client = rbackend._client

    def dead_client():
        _, scripts = real_client()
        return dead, {n: dead.register_script(s.script) for n, s in scripts.items()}

    monkeypatch.setattr(rbackend, "_client", dead_client)
    run(rbackend.settle, res, D("0.3"), UsageEventData())  # does not raise
    monkeypatch.setattr(rbackend, "_client", real_client)
    assert UsageEvent.objects.filter(request_id=res.request_id).count() == 1
    # the hold is still counted in Redis until reconciliation
    assert observed(rbackend, w.org, [key_b])[key_b.pk] == D("0.5")
    later = timezone.now() + dt.timedelta(hours=1)
    assert services.reservations_reconcile(now=later)["settled"] == 1
    assert observed(rbackend, w.org, [key_b])[key_b.pk] == D("0.3")
    assert services.reservations_reconcile(now=later) == {"released": 0, "settled": 0}
