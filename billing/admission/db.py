"""The database admission backend (embedded mode, no Redis).

One transaction per reserve: conditional ``UPDATE ... WHERE spent + held + amount <= limit`` on
each applicable budget's usage row, then on the account (``balance - held >= amount``), in a
fixed lock order (rate window, budget usage rows by id, account). Any refusal rolls the whole
transaction back, so nothing changes. On PostgreSQL the row locks taken by the UPDATEs serialize
concurrent reservations on the same counters (the WHERE is re-checked after the lock); SQLite
runs the transaction as ``BEGIN IMMEDIATE`` (settings), which serializes writers.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.admission import heartbeat
from billing.admission.base import (
    AdmissionContext,
    BudgetInfo,
    HoldRequest,
    Reservation,
    UsageEventData,
    budgets_query,
    check_open,
    deadline_for,
    reservation_insert,
    reservation_periods,
    settle_rows,
    usage_event_from_progress,
)
from billing.admission.heartbeat import HEARTBEAT_TTL
from billing.errors import BalanceExhausted, BudgetExceeded, RateLimited
from billing.models import BillingAccount, BudgetUsage, ProcessHeartbeat, RateWindow
from billing.models import Reservation as ReservationRow
from routing.pricing import quantize

# SQLite keeps decimals as floating point; comparisons get half a unit of the 12th place of
# slack so float noise never refuses an exact fit (PostgreSQL compares exact numerics).
_SQLITE_SLACK = Decimal("0.0000000000005")


def _slack() -> Decimal:
    return _SQLITE_SLACK if connection.vendor == "sqlite" else Decimal(0)


class _Refused(Exception):
    def __init__(self, error: Exception) -> None:
        self.error = error


def _window(now: dt.datetime) -> dt.datetime:
    return now.replace(second=0, microsecond=0)


def _retry_after(now: dt.datetime) -> int:
    return max(1, math.ceil(60 - now.second - now.microsecond / 1e6))


def _budget_refusal(budget: BudgetInfo) -> BudgetExceeded:
    return BudgetExceeded(layer=budget.scope, scope_id=budget.scope_id, budget_id=budget.id)


class DatabaseBackend:
    name = "db"

    # -- reserve ------------------------------------------------------------------------
    def reserve_sync(
        self, request_id: str, ctx: AdmissionContext, hold: HoldRequest
    ) -> Reservation:
        if hold.input_amount < 0 or hold.output_price < 0 or hold.output_tokens < 0:
            raise ValueError("amounts and tokens cannot be negative")
        now = timezone.now()
        budgets = budgets_query(ctx)
        periods = reservation_periods(ctx, budgets, now)
        usage_ids = self._usage_rows(periods)
        limited = ctx.key_id is not None and (
            ctx.rpm_limit is not None or ctx.tpm_limit is not None
        )
        window = _window(now) if limited else None
        if window is not None:
            RateWindow.objects.bulk_create(
                [RateWindow(key_id=ctx.key_id, window_start=window)], ignore_conflicts=True
            )
        slack = _slack()
        try:
            with transaction.atomic():
                out = self._affordable(ctx, hold, list(zip(usage_ids, budgets, strict=True)))
                amount = quantize(hold.amount_for(out))
                tokens = hold.input_tokens + out
                if window is not None:
                    self._rate_take(ctx, window, tokens, now)
                # budget usage rows by budget id, then the account: the lock order of every
                # writer of these rows (settle, usage_events_post)
                pairs = sorted(zip(usage_ids, budgets, strict=True), key=lambda p: p[1].id)
                for usage_id, budget in pairs:
                    rows = BudgetUsage.objects.filter(pk=usage_id)
                    if budget.blocks:
                        rows = rows.filter(spent__lte=budget.limit_usd - amount + slack - F("held"))
                    if rows.update(held=F("held") + amount) != 1:
                        raise _Refused(_budget_refusal(budget))
                ok = BillingAccount.objects.filter(
                    organization_id=ctx.organization_id, balance__gte=F("held") + (amount - slack)
                ).update(held=F("held") + amount)
                if ok != 1:
                    raise _Refused(BalanceExhausted(organization_id=ctx.organization_id))
                res = Reservation(
                    request_id=request_id,
                    ctx=ctx,
                    amount=amount,
                    tokens=tokens,
                    backend=self.name,
                    created_at=now,
                    deadline=deadline_for(now),
                    budgets=periods,
                    rate_window=window,
                    output_tokens=out,
                )
                reservation_insert(res)
        except _Refused as refused:
            raise refused.error from None
        res.extra["usage_ids"] = usage_ids
        heartbeat.start(self)
        return res

    @staticmethod
    def _affordable(
        ctx: AdmissionContext, hold: HoldRequest, budgets: list[tuple[int, BudgetInfo]]
    ) -> int:
        """How many output tokens to hold: all that were asked when the tightest layer (a
        blocking budget's room or the balance) pays for them, else as many as it pays for
        (never below ``min_output``); an exact request is all or nothing."""
        if hold.output_price == 0:
            return hold.output_tokens
        account = BillingAccount.objects.filter(organization_id=ctx.organization_id).first()
        room = (account.balance - account.held) if account is not None else Decimal(0)
        tightest: Exception = BalanceExhausted(organization_id=ctx.organization_id)
        rows = dict(
            BudgetUsage.objects.filter(pk__in=[u for u, _ in budgets]).values_list(
                "pk", Coalesce(F("spent"), Decimal(0)) + F("held")
            )
        )
        for usage_id, budget in budgets:
            left = budget.limit_usd - rows.get(usage_id, Decimal(0))
            if budget.blocks and left < room:
                room, tightest = left, _budget_refusal(budget)
        affordable = math.floor((room - hold.input_amount) / hold.output_price)
        if affordable >= hold.output_tokens:
            return hold.output_tokens
        if hold.exact or affordable < max(hold.min_output, 0) or affordable < 0:
            raise _Refused(tightest)
        return affordable

    @staticmethod
    def _usage_rows(periods: tuple[tuple[int, str, str], ...]) -> list[int]:
        if not periods:
            return []
        wanted = [(b, dt.datetime.fromisoformat(start)) for b, start, _scope in periods]
        q = Q()
        for budget_id, start in wanted:
            q |= Q(budget_id=budget_id, period_start=start)
        found = {
            (b, s): pk
            for pk, b, s in BudgetUsage.objects.filter(q).values_list(
                "pk", "budget_id", "period_start"
            )
        }
        if len(found) < len(wanted):
            BudgetUsage.objects.bulk_create(
                [
                    BudgetUsage(budget_id=b, period_start=s)
                    for b, s in wanted
                    if (b, s) not in found
                ],
                ignore_conflicts=True,
            )
            found = {
                (b, s): pk
                for pk, b, s in BudgetUsage.objects.filter(q).values_list(
                    "pk", "budget_id", "period_start"
                )
            }
        return [found[key] for key in wanted]

    @staticmethod
    def _rate_take(
        ctx: AdmissionContext, window: dt.datetime, tokens: int, now: dt.datetime
    ) -> None:
        rows = RateWindow.objects.filter(key_id=ctx.key_id, window_start=window)
        if ctx.rpm_limit is not None:
            rows = rows.filter(requests__lt=ctx.rpm_limit)
        if ctx.tpm_limit is not None:
            rows = rows.filter(tokens__lte=ctx.tpm_limit - tokens)
        if rows.update(requests=F("requests") + 1, tokens=F("tokens") + tokens) == 1:
            return
        current = RateWindow.objects.filter(key_id=ctx.key_id, window_start=window).first()
        limit = "tokens"
        if ctx.rpm_limit is not None and (current is None or current.requests >= ctx.rpm_limit):
            limit = "requests"
        raise _Refused(RateLimited(limit=limit, retry_after=_retry_after(now)))

    # -- settle / release -----------------------------------------------------------------
    def settle_sync(
        self, res: Reservation, actual_cost: Decimal, usage_event: UsageEventData
    ) -> None:
        check_open(res)
        with transaction.atomic():
            held = settle_rows(res, actual_cost, usage_event, db_held=True)
            # the reservation's hold becomes the actual cost (all of it when the hold was
            # already released by reconciliation)
            delta = actual_cost - (res.amount if held else Decimal(0))
            token_delta = (
                usage_event.tokens_in + usage_event.tokens_out - (res.tokens if held else 0)
            )
            self._move(res, delta, token_delta)

    def release_sync(self, res: Reservation) -> None:
        check_open(res)
        with transaction.atomic():
            deleted, _ = ReservationRow.objects.filter(request_id=res.request_id).delete()
            if deleted:
                self._move(res, -res.amount, -res.tokens)

    @staticmethod
    def _move(res: Reservation, delta: Decimal, token_delta: int) -> None:
        ctx = res.ctx
        if res.rate_window is not None and token_delta:
            RateWindow.objects.filter(key_id=ctx.key_id, window_start=res.rate_window).update(
                tokens=F("tokens") + token_delta
            )
        if delta:
            for budget_id, start, _scope in sorted(res.budgets):
                BudgetUsage.objects.filter(
                    budget_id=budget_id, period_start=dt.datetime.fromisoformat(start)
                ).update(held=F("held") + delta)
            BillingAccount.objects.filter(organization_id=ctx.organization_id).update(
                held=F("held") + delta
            )

    # -- async interface -----------------------------------------------------------------
    async def reserve(
        self, request_id: str, ctx: AdmissionContext, hold: HoldRequest
    ) -> Reservation:
        return await sync_to_async(self.reserve_sync, thread_sensitive=True)(request_id, ctx, hold)

    async def settle(
        self, reservation: Reservation, actual_cost: Decimal, usage_event: UsageEventData
    ) -> None:
        await sync_to_async(self.settle_sync, thread_sensitive=True)(
            reservation, actual_cost, usage_event
        )

    async def release(self, reservation: Reservation) -> None:
        await sync_to_async(self.release_sync, thread_sensitive=True)(reservation)

    # -- liveness and stream progress -----------------------------------------------------
    def heartbeat_sync(self, process: str) -> None:
        ProcessHeartbeat.objects.update_or_create(
            process=process, defaults={"seen_at": timezone.now()}
        )

    async def progress(
        self, reservation: Reservation, output_tokens: int, bill: dict[str, Any] | None
    ) -> None:
        """Checkpoint a stream's relayed output on its hold's row (``bill`` the first time)."""

        def write() -> None:
            row = ReservationRow.objects.filter(request_id=reservation.request_id)
            current = row.values_list("progress", flat=True).first()
            if current is None:
                return  # settled or released meanwhile
            row.update(
                progress={**current, "out": output_tokens, **({"bill": bill} if bill else {})}
            )

        await sync_to_async(write, thread_sensitive=True)()

    # -- reconciliation ------------------------------------------------------------------
    def reconcile_sync(self, *, now: dt.datetime | None = None) -> dict[str, int]:
        """Close the holds nobody will finish: past their deadline, or of a process whose
        heartbeat is older than ``HEARTBEAT_TTL``: charge what a stream relayed when it
        checkpointed, release the rest."""
        now = now or timezone.now()
        stale = now - dt.timedelta(seconds=HEARTBEAT_TTL)
        alive = set(
            ProcessHeartbeat.objects.filter(seen_at__gte=stale).values_list("process", flat=True)
        )
        out = {"released": 0, "settled": 0}
        rows = ReservationRow.objects.filter(backend=self.name).filter(
            Q(deadline__lt=now) | (Q(created_at__lt=stale) & ~Q(process__in=alive))
        )
        for row in rows.order_by("id")[:5000]:
            bill = (row.progress or {}).get("bill")
            if bill:
                out["settled"] += int(self._charge_row(row, bill))
            else:
                out["released"] += int(self.release_row(row))
        ProcessHeartbeat.objects.filter(seen_at__lt=now - dt.timedelta(days=1)).delete()
        return out

    def _charge_row(self, row: ReservationRow, bill: dict[str, Any]) -> bool:
        """A dead process's stream: its usage event from the last checkpoint, the hold moved to
        that cost, the row gone, in one transaction."""
        res = self._from_row(row)
        with transaction.atomic():
            deleted, _ = ReservationRow.objects.filter(pk=row.pk).delete()
            if not deleted:
                return False
            cost = usage_event_from_progress(
                row.request_id, bill, int(row.progress.get("out", 0)), res.amount
            )
            self._move(res, cost - res.amount, 0)
        return True

    def release_row(self, row: ReservationRow) -> bool:
        """Release an abandoned reservation row (reconciliation). True when this call freed it."""
        res = self._from_row(row)
        with transaction.atomic():
            deleted, _ = ReservationRow.objects.filter(pk=row.pk).delete()
            if deleted:
                self._move(res, -res.amount, -res.tokens)
        return bool(deleted)

    def _from_row(self, row: ReservationRow) -> Reservation:
        return Reservation(
            request_id=row.request_id,
            ctx=AdmissionContext(organization_id=row.organization_id, key_id=row.key_id),
            amount=row.amount,
            tokens=row.tokens,
            backend=self.name,
            created_at=row.created_at,
            deadline=row.deadline,
            budgets=tuple((b, s, "") for b, s in row.budget_periods),
            rate_window=row.rate_window,
        )

    def invalidate(self, organization_id: int) -> None:
        """Nothing is cached: every reserve reads the budgets in its transaction."""
