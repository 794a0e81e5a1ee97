"""Killing a gateway process mid-request: its reservations stay held (durably) until the
reconciliation task releases them; nothing is charged."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from billing import services
from billing.models import LedgerEntry, Reservation, UsageEvent
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
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "BILLING_ADMISSION_BACKEND": backend.name,
    }
    if backend.name == "redis":
        env.update(REDIS_URL=settings.REDIS_URL, BILLING_REDIS_PREFIX=backend.prefix)
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
