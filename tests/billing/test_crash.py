"""Killing a gateway process mid-request: its reservations stay held (durably) until the
reconciliation task closes them: released when nothing was relayed, charged from the last
checkpoint when a stream was."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from billing import services
from billing.admission.heartbeat import HEARTBEAT_TTL
from billing.models import LedgerEntry, Reservation, UsageEvent, UsageRecord
from tests.billing.admission_helpers import observed
from tests.billing.factories import budget, make_world

ROOT = Path(__file__).resolve().parents[2]
D = Decimal


@pytest.mark.django_db(transaction=True)
def test_killed_process_reservations_are_released_by_reconciliation(backend):
    if connection.vendor != "postgresql":
        pytest.skip("needs a database another process can open (PostgreSQL)")
    w = make_world("crash", balance="10")
    b = budget(w, "key", "1")
    env = _child_env(backend)
    cmd = [
        sys.executable,
        str(ROOT / "manage.py"),
        "billing_burst",
        "--key-id",
        str(w.key_id),
        "--requests",
        "3",
        "--cost",
        "0.2",
        "--hold-seconds",
        "120",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        held = json.loads(line)["held"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-request: between reserve and settle
        proc.wait(timeout=30)
    assert len(held) == 3
    assert set(Reservation.objects.values_list("request_id", flat=True)) == set(held)
    assert observed(backend, w.org, [b]) == {"available": D("9.4"), b.pk: D("0.6")}

    late = max(Reservation.objects.values_list("deadline", flat=True)) + dt.timedelta(minutes=2)
    assert services.reservations_reconcile(now=late) == {"released": 3, "settled": 0}
    assert observed(backend, w.org, [b]) == {"available": D("10"), b.pk: D("0")}
    assert not Reservation.objects.exists()
    assert not UsageEvent.objects.exists()
    assert LedgerEntry.objects.filter(organization=w.org, kind="usage").count() == 0
    assert services.reservations_reconcile(now=late) == {"released": 0, "settled": 0}


@pytest.mark.django_db(transaction=True)
def test_killed_process_streams_are_charged_from_their_checkpoints_within_a_minute(backend):
    """A process killed while streaming: its heartbeat stops, and the next reconciliation
    after ``HEARTBEAT_TTL`` (not the reservation's 15-minute deadline) charges each stream for
    what its last checkpoint counted and frees the rest of the hold."""
    if connection.vendor != "postgresql":
        pytest.skip("needs a database another process can open (PostgreSQL)")
    w = make_world("crash-stream", balance="10")
    b = budget(w, "key", "1")
    env = _child_env(backend)
    env["BILLING_HEARTBEATS"] = "1"
    cmd = [sys.executable, str(ROOT / "manage.py"), "billing_burst", "--key-id", str(w.key_id)]
    cmd += ["--requests", "3", "--cost", "0.2", "--hold-seconds", "120"]
    cmd += ["--progress-tokens", "1000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        held = json.loads(proc.stdout.readline())["held"]
        time.sleep(0.5)  # the checkpoints are written right after the line
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(held) == 3
    killed_at = timezone.now()
    # Still alive as far as anyone knows: nothing is closed yet.
    assert services.reservations_reconcile(now=killed_at) == {"released": 0, "settled": 0}
    if backend.name == "redis":  # the heartbeat key's expiry, without waiting for it
        for key in backend.sync.scan_iter(f"{backend.prefix}:proc:*"):
            backend.sync.delete(key)
    later = killed_at + dt.timedelta(seconds=HEARTBEAT_TTL + 1)
    assert later - killed_at < dt.timedelta(seconds=60)
    out = services.reservations_reconcile(now=later)
    assert out["settled"] + out["released"] == 3
    services.usage_events_post()
    # 10 prompt tokens at $1/M and the 1,000 relayed output tokens at $2/M, per stream
    records = UsageRecord.objects.filter(request_id__in=held)
    assert sorted(records.values_list("cost", flat=True)) == [D("0.00201")] * 3
    assert set(records.values_list("tokens_out", "status")) == {(1000, "incomplete")}
    assert all(r.budget_periods for r in records)
    assert not Reservation.objects.exists()
    assert observed(backend, w.org, [b]) == {
        "available": D("10") - 3 * D("0.00201"),
        b.pk: 3 * D("0.00201"),
    }
    call_command("billing_check", stdout=io.StringIO())


def _child_env(backend) -> dict[str, str]:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "BILLING_ADMISSION_BACKEND": backend.name,
    }
    if backend.name == "redis":
        env.update(REDIS_URL=settings.REDIS_URL, BILLING_REDIS_PREFIX=backend.prefix)
    return env
