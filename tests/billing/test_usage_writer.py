"""The Redis backend's write-behind (``BILLING_USAGE_WRITE=behind``, production's default): the
request path never waits for the database; reservation rows and usage events are committed in
batches by one writer thread, and the usage stream in Redis covers a process that dies before
its batch commits. These tests use real commits (the writer has its own connection)."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import pytest

from billing import services
from billing.admission import HoldRequest, UsageEventData, writer
from billing.admission.base import usage_event_row
from billing.admission.redis import UsageStream
from billing.models import LedgerEntry, Reservation, UsageEvent, UsageRecord
from tests.billing.admission_helpers import observed, run
from tests.billing.factories import budget, make_world

D = Decimal
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def behind(rbackend, settings):
    settings.BILLING_USAGE_WRITE = "behind"
    writer.reset_writers()
    yield rbackend
    writer.reset_writers()


def event(tokens_in: int = 10, tokens_out: int = 5) -> UsageEventData:
    return UsageEventData(model="m", provider="p", tokens_in=tokens_in, tokens_out=tokens_out)


async def append_only(backend, res, cost: Decimal) -> None:
    """The settle script's step alone (counted, appended to the stream), as a process that died
    before its writer committed leaves it."""
    row = usage_event_row(res, cost, event(), db_held=False)
    await backend.settle_counters(res, cost, 15, event=writer.event_payload(row))


def settle_without_writer(backend, w, cost: Decimal):
    async def go():
        res = await backend.reserve(uuid.uuid4().hex, w.ctx(), HoldRequest.fixed(D("0.05"), 100))
        await append_only(backend, res, cost)
        return res

    return run(go)


def test_settle_counts_at_once_and_the_rows_follow_in_batches(behind):
    w = make_world("wb", balance="10")
    b = budget(w, "key", "5")

    async def go() -> list[str]:
        async def one() -> str:
            res = await behind.reserve(uuid.uuid4().hex, w.ctx(), HoldRequest.fixed(D("0.05"), 100))
            await behind.settle(res, D("0.01"), event())
            return res.request_id

        ids = await asyncio.gather(*(one() for _ in range(60)))
        # counted in Redis before any commit was awaited
        assert observed(behind, w.org, [b])[b.pk] == D("0.60")
        await behind.flush_writes()
        return list(ids)

    ids = run(go)
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == set(ids)
    assert UsageEvent.objects.get(request_id=ids[0]).cost == D("0.01")
    assert not Reservation.objects.exists()  # settled before (or with) their rows' batch
    w_ = behind.writer()
    assert w_.events_written == 60
    assert w_.batches < 60  # whatever queued during a commit joined the next one
    assert UsageStream(behind).length() == 0  # entries deleted once committed
    services.usage_events_post()
    assert UsageRecord.objects.filter(organization=w.org).count() == 60
    assert -sum(
        LedgerEntry.objects.filter(organization=w.org, kind="usage").values_list(
            "amount", flat=True
        )
    ) == D("0.60")


def test_settles_spaced_within_the_linger_share_one_transaction(behind, settings):
    """A busy worker commits once per linger, not once per request: 20 settles queued 1 ms
    apart (well inside the 200 ms linger) are one batch; with no linger, each waits for no
    one and they take several."""
    w = make_world("wb-linger", balance="10")

    async def spaced(n: int) -> None:
        for _ in range(n):
            res = await behind.reserve(uuid.uuid4().hex, w.ctx(), HoldRequest.fixed(D("0.05"), 100))
            await behind.settle(res, D("0.01"), event())
            await asyncio.sleep(0.001)
        await behind.flush_writes()

    settings.BILLING_USAGE_LINGER_S = 0.2
    run(spaced, 20)
    assert behind.writer().batches == 1
    assert behind.writer().events_written == 20

    settings.BILLING_USAGE_LINGER_S = 0.0
    run(spaced, 20)
    assert behind.writer().events_written == 40
    assert behind.writer().batches > 2


def test_open_holds_reach_the_database_and_releases_remove_them(behind):
    w = make_world("wb-hold", balance="10")

    async def hold():
        held = await behind.reserve(uuid.uuid4().hex, w.ctx(), HoldRequest.fixed(D("0.05"), 100))
        dropped = await behind.reserve(uuid.uuid4().hex, w.ctx(), HoldRequest.fixed(D("0.05"), 100))
        await behind.flush_writes()
        return held, dropped

    async def release(res):
        await behind.release(res)
        await behind.flush_writes()

    held, dropped = run(hold)
    rows = set(Reservation.objects.values_list("request_id", flat=True))
    assert rows == {held.request_id, dropped.request_id}
    run(release, dropped)
    assert set(Reservation.objects.values_list("request_id", flat=True)) == {held.request_id}
    assert not UsageEvent.objects.exists()


def test_a_process_dying_before_its_commit_loses_no_usage(behind):
    """The settle script appended the event to the stream; the process died before its writer
    committed it. Another process's writer (or Celery's reconciliation) drains it, once."""
    w = make_world("wb-orphan", balance="10")
    b = budget(w, "key", "5")

    res = settle_without_writer(behind, w, D("0.02"))
    stream = UsageStream(behind)
    assert stream.length() == 1
    assert not UsageEvent.objects.exists()
    assert writer.drain_orphans(stream) == 0  # too young: a live writer may still commit it
    assert writer.drain_orphans(stream, older_than_s=0) == 1
    assert stream.length() == 0
    got = UsageEvent.objects.get(request_id=res.request_id)
    assert (got.cost, got.organization_id, got.data["tokens_in"]) == (D("0.02"), w.org.pk, 10)
    assert observed(behind, w.org, [b])[b.pk] == D("0.02")
    # drained again (the entry was left behind) after it was posted: not charged twice
    services.usage_events_post()
    res2 = settle_without_writer(behind, w, D("0.02"))
    run(append_only, behind, res, D("0.02"))
    assert writer.drain_orphans(stream, older_than_s=0) == 2
    services.usage_events_post()
    assert UsageRecord.objects.filter(request_id=res.request_id).count() == 1
    assert UsageRecord.objects.filter(request_id=res2.request_id).count() == 1
    assert not UsageEvent.objects.exists()


def test_reconciliation_drains_orphans(behind, monkeypatch):
    w = make_world("wb-reconcile", balance="10")

    res = settle_without_writer(behind, w, D("0.03"))
    monkeypatch.setattr(writer, "ORPHAN_AGE_S", 0.0)
    services.reservations_reconcile()
    assert UsageEvent.objects.get(request_id=res.request_id).cost == D("0.03")


def test_a_database_outage_delays_the_rows_and_loses_none(behind, monkeypatch):
    w = make_world("wb-outage", balance="10")
    real = writer.commit_rows
    calls = {"n": 0}

    def flaky(**kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("database unreachable")
        return real(**kwargs)

    monkeypatch.setattr(writer, "commit_rows", flaky)

    async def go():
        ids = []
        for _ in range(5):
            res = await behind.reserve(uuid.uuid4().hex, w.ctx(), HoldRequest.fixed(D("0.05"), 100))
            await behind.settle(res, D("0.01"), event())
            ids.append(res.request_id)
        await behind.flush_writes()
        return ids

    ids = run(go)
    assert behind.writer().failures == 2
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == set(ids)
    assert UsageStream(behind).length() == 0


def test_reserve_and_settle_make_no_query_on_the_request_path(behind, monkeypatch, settings):
    """Warm (the organization's budgets cached): every query of a request's reserve and
    settle runs on the writer's thread (or, for the budgets' periodic re-check, on a
    background refresh thread), none on the request's."""
    import threading

    settings.MEGAROUTER_REFRESH_POOL = True

    from django.db.backends import utils

    w = make_world("wb-zero", balance="10")
    budget(w, "key", "5")

    async def one():
        res = await behind.reserve(uuid.uuid4().hex, w.ctx(), HoldRequest.fixed(D("0.05"), 100))
        await behind.settle(res, D("0.01"), event())

    run(one)  # the organization's first request builds its counters (then drops the budgets)
    run(one)  # warm: loads the budgets
    run(behind.flush_writes)
    seen: list[tuple[str, str]] = []
    original = utils.CursorWrapper._execute

    def counting(self, sql, *args, **kwargs):
        seen.append((threading.current_thread().name, sql.split(" ")[0], sql[:120]))
        return original(self, sql, *args, **kwargs)

    monkeypatch.setattr(utils.CursorWrapper, "_execute", counting)
    for _ in range(3):
        run(one)
    run(behind.flush_writes)
    background = ("billing-usage-writer", "cache-refresh")
    assert [q for q in seen if not q[0].startswith(background)] == []
    assert "INSERT" in {q[1] for q in seen}
    assert not Reservation.objects.exists()  # settled within a second: no row was written


def test_a_hold_open_long_enough_gets_its_row_and_settle_deletes_it(behind, monkeypatch):
    monkeypatch.setattr(writer, "HOLD_WRITE_AFTER_S", 0.05)
    w = make_world("wb-long", balance="10")

    async def reserve():
        return await behind.reserve(uuid.uuid4().hex, w.ctx(), HoldRequest.fixed(D("0.05"), 100))

    async def settle(res):
        await behind.settle(res, D("0.01"), event())
        await behind.flush_writes()

    res = run(reserve)
    deadline = time.monotonic() + 5
    while not Reservation.objects.filter(request_id=res.request_id).exists():
        assert time.monotonic() < deadline, "the long-open hold was never written"
        time.sleep(0.02)
    run(settle, res)
    assert not Reservation.objects.exists()
    assert UsageEvent.objects.filter(request_id=res.request_id).count() == 1
