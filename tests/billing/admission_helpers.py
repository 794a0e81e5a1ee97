"""Reading admission state the same way for both backends (the contract suite compares)."""

from __future__ import annotations

from decimal import Decimal

from asgiref.sync import async_to_sync
from django.utils import timezone

from billing.admission.redis import NANO
from billing.models import BillingAccount, BudgetUsage, Reservation
from billing.periods import period_start

D = Decimal


def run(fn, *args, **kwargs):
    return async_to_sync(fn)(*args, **kwargs)


def observed(backend, org, budgets) -> dict:
    """{"available": ..., budget id: used (spend + holds) in the current period}."""
    now = timezone.now()
    out: dict = {}
    if backend.name == "db":
        account = BillingAccount.objects.filter(organization=org).first()
        out["available"] = account.balance - account.held if account else D(0)
        for b in budgets:
            start = period_start(b.period, now, org.time_zone)
            row = BudgetUsage.objects.filter(budget=b, period_start=start).first()
            out[b.pk] = (row.spent + row.held) if row else D(0)
    else:
        k = backend.keys(org.pk)
        if not backend.sync.exists(k.epoch):
            backend.rebuild_sync(org.pk)  # what the next reserve would do
        bal = backend.sync.get(k.bal)
        out["available"] = D(bal) / NANO if bal is not None else None
        for b in budgets:
            start = period_start(b.period, now, org.time_zone)
            value = backend.sync.get(k.budget(b.pk, start))
            out[b.pk] = D(value or 0) / NANO
    return out


def open_reservations(org) -> int:
    return Reservation.objects.filter(organization_id=org.pk).count()


def reserve_held(backend, *args):
    """Reserve and wait for the durable copy (the gateway's loop would keep running; a test's
    ends with the call)."""

    async def go():
        res = await backend.reserve(*args)
        if "persist" in res.extra:
            await res.extra["persist"]
        return res

    return run(go)
