"""Admission types shared by both backends, and the database writes they share.

Per request (``billing.admission.service`` is what the gateway calls)::

    backend = get_backend()
    ctx = AdmissionContext.from_key_context(key_ctx)
    reservation = await backend.reserve(request_id, ctx, HoldRequest(...))  # or a refusal
    ...call the provider (reservation.output_tokens is the most it may produce)...
    await backend.settle(reservation, usage_cost(price, usage), UsageEventData(...))
    # or, when nothing was produced (every deployment failed): await backend.release(reservation)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from billing.admission.heartbeat import current
from billing.models import BillingAccount, Budget, BudgetMode, BudgetScope, UsageEvent
from billing.periods import period_start
from routing.pricing import usage_cost


@dataclass(frozen=True, slots=True)
class AdmissionContext:
    """The key context ids admission needs (``orgs.keys.KeyContext`` has them all)."""

    organization_id: int
    department_id: int | None = None
    team_id: int | None = None
    project_id: int | None = None
    member_id: int | None = None
    key_id: int | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    time_zone: str = "UTC"
    tags: tuple[str, ...] = ()  # the request's tags as "key=value" (tag budgets apply by them)

    @classmethod
    def from_key_context(cls, ctx: Any, tags: tuple[str, ...] = ()) -> AdmissionContext:
        return cls(
            organization_id=ctx.organization_id,
            department_id=ctx.department_id,
            team_id=ctx.team_id,
            project_id=ctx.project_id,
            member_id=ctx.member_id,
            key_id=ctx.key_id,
            rpm_limit=ctx.rpm_limit,
            tpm_limit=ctx.tpm_limit,
            time_zone=ctx.time_zone,
            tags=tags,
        )

    def scope_ids(self) -> dict[str, int | None]:
        return {
            BudgetScope.DEPARTMENT: self.department_id,
            BudgetScope.TEAM: self.team_id,
            BudgetScope.PROJECT: self.project_id,
            BudgetScope.MEMBER: self.member_id,
            BudgetScope.KEY: self.key_id,
        }


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """What to hold, in money and tokens. The backend holds the input bound and as many output
    tokens as asked (``exact``: all of them or a refusal), else as many as the tightest layer
    (a budget's room or the balance) pays for, at most ``output_tokens`` and at least
    ``min_output``; the reservation says how many (``Reservation.output_tokens``)."""

    input_amount: Decimal  # the prompt's bound at the dearest candidate's input price
    output_price: Decimal  # per output token, the dearest candidate's (reasoning included)
    output_tokens: int
    exact: bool
    input_tokens: int
    min_output: int = 0

    @classmethod
    def fixed(cls, amount: Decimal, tokens: int) -> HoldRequest:
        """Exactly ``amount`` (and ``tokens`` against the key's token limit)."""
        return cls(amount, Decimal(0), 0, True, tokens)

    def amount_for(self, output_tokens: int) -> Decimal:
        return self.input_amount + self.output_price * output_tokens


@dataclass(frozen=True, slots=True)
class BudgetInfo:
    id: int
    scope: str
    scope_id: int
    period: str
    limit_usd: Decimal
    mode: str
    tag: str = ""  # a tag budget's "key=value"

    @property
    def blocks(self) -> bool:
        return self.mode == BudgetMode.BLOCK


# Fixed lock / check order: organization first, key last (the order refusals are reported in).
LAYER_ORDER = {s: i for i, s in enumerate(BudgetScope.values)}


def budgets_load(organization_id: int) -> tuple[BudgetInfo, ...]:
    """Every budget of an organization (one query)."""
    rows = Budget.objects.filter(organization_id=organization_id).values_list(
        "id", "scope", "scope_id", "period", "limit_usd", "mode", "tag"
    )
    return tuple(BudgetInfo(*row) for row in rows)


def budgets_version(organization_id: int) -> int:
    """The version of the organization's budget definitions (raised by every change)."""
    value = (
        BillingAccount.objects.filter(organization_id=organization_id)
        .values_list("budgets_version", flat=True)
        .first()
    )
    return int(value or 0)


def budgets_applicable(ctx: AdmissionContext, budgets: tuple[BudgetInfo, ...]) -> list[BudgetInfo]:
    ids = ctx.scope_ids()
    out = [
        b
        for b in budgets
        if b.scope == BudgetScope.ORGANIZATION
        or (b.scope == BudgetScope.TAG and b.tag in ctx.tags)
        or (b.scope != BudgetScope.TAG and ids.get(b.scope) == b.scope_id)
    ]
    out.sort(key=lambda b: (LAYER_ORDER[b.scope], b.id))
    return out


def budgets_query(ctx: AdmissionContext) -> list[BudgetInfo]:
    """The applicable budgets straight from the database (one query)."""
    q = Q(scope=BudgetScope.ORGANIZATION)
    for scope, scope_id in ctx.scope_ids().items():
        if scope_id is not None:
            q |= Q(scope=scope, scope_id=scope_id)
    if ctx.tags:
        q |= Q(scope=BudgetScope.TAG, tag__in=ctx.tags)
    rows = (
        Budget.objects.filter(organization_id=ctx.organization_id)
        .filter(q)
        .values_list("id", "scope", "scope_id", "period", "limit_usd", "mode", "tag")
    )
    out = [BudgetInfo(*row) for row in rows]
    out.sort(key=lambda b: (LAYER_ORDER[b.scope], b.id))
    return out


@dataclass(slots=True)
class UsageEventData:
    """Metadata of a finished request (never its content); becomes a ``UsageRecord``."""

    requested_model: str = ""
    model: str = ""
    provider: str = ""
    deployment: str = ""
    strategy: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    price_version_id: int | None = None
    latency_ms: int | None = None
    ttft_ms: int | None = None
    status: str = "ok"
    attempts: int = 1
    fallback_used: bool = False
    routing: dict[str, Any] = field(default_factory=dict)
    # Canonical id savings are measured against ("": the default reference model).
    reference_model: str = ""
    # The caller's request tags (gateway.wire.common.request_tags): metadata, never content.
    tags: dict[str, str] = field(default_factory=dict)


_USAGE_FIELDS = tuple(f.name for f in fields(UsageEventData))


@dataclass(slots=True)
class Reservation:
    """An admitted request's hold. Pass it back to ``settle`` or ``release`` exactly once."""

    request_id: str
    ctx: AdmissionContext
    amount: Decimal
    tokens: int
    backend: str
    created_at: dt.datetime
    deadline: dt.datetime
    # (budget id, period start ISO, scope) for every budget it counts against
    budgets: tuple[tuple[int, str, str], ...]
    rate_window: dt.datetime | None = None
    output_tokens: int = 0  # the most the provider may produce (sent upstream as its limit)
    closed: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def budget_periods(self) -> list[list[Any]]:
        return [[b, start] for b, start, _scope in self.budgets]


class AdmissionBackend(Protocol):
    name: str

    async def reserve(
        self, request_id: str, ctx: AdmissionContext, hold: HoldRequest
    ) -> Reservation: ...

    async def settle(
        self, reservation: Reservation, actual_cost: Decimal, usage_event: UsageEventData
    ) -> None: ...

    async def release(self, reservation: Reservation) -> None: ...


def reservation_periods(
    ctx: AdmissionContext, budgets: list[BudgetInfo], now: dt.datetime
) -> tuple[tuple[int, str, str], ...]:
    return tuple(
        (b.id, period_start(b.period, now, ctx.time_zone).isoformat(), b.scope) for b in budgets
    )


def deadline_for(now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(seconds=settings.BILLING_RESERVATION_TTL)


def reservation_row(res: Reservation) -> dict[str, Any]:
    """The ``Reservation`` row's fields (the durable copy of a hold)."""
    return {
        "request_id": res.request_id,
        "organization_id": res.ctx.organization_id,
        "backend": res.backend,
        "amount": res.amount,
        "tokens": res.tokens,
        "key_id": res.ctx.key_id,
        "budget_periods": res.budget_periods,
        "rate_window": res.rate_window,
        "created_at": res.created_at,
        "deadline": res.deadline,
        "process": current(),
        "progress": {},
    }


def reservation_insert(res: Reservation) -> None:
    from billing.models import Reservation as Row

    Row.objects.create(**reservation_row(res))


def usage_event_row(
    res: Reservation, actual_cost: Decimal, data: UsageEventData, *, db_held: bool
) -> dict[str, Any]:
    """The ``UsageEvent`` row's fields: metadata of the finished request, never content."""
    ctx = res.ctx
    # a field-by-field copy, not ``asdict``: its recursive deep copy of the explanation was
    # about 1 % of a worker's CPU; the two dicts are copied one level (nobody mutates below)
    payload = {name: getattr(data, name) for name in _USAGE_FIELDS}
    payload["routing"] = dict(data.routing)
    payload["tags"] = dict(data.tags)
    payload.update(
        department_id=ctx.department_id,
        team_id=ctx.team_id,
        project_id=ctx.project_id,
        member_id=ctx.member_id,
        key_id=ctx.key_id,
    )
    return {
        "request_id": res.request_id,
        "organization_id": ctx.organization_id,
        "backend": res.backend,
        "db_held": db_held,
        "cost": actual_cost,
        "budget_periods": res.budget_periods,
        "data": payload,
        "reference_model": data.reference_model,
        "created_at": res.created_at,
    }


def usage_event_insert(
    res: Reservation, actual_cost: Decimal, data: UsageEventData, *, db_held: bool
) -> None:
    """Inside the settle transaction: the durable usage event."""
    UsageEvent.objects.create(**usage_event_row(res, actual_cost, data, db_held=db_held))


def settle_rows(
    res: Reservation, actual_cost: Decimal, data: UsageEventData, *, db_held: bool
) -> bool:
    """Delete the reservation row and write the usage event, atomically. True when the row was
    still there (False: reconciliation released it, or it was never persisted)."""
    from billing.models import Reservation as Row

    with transaction.atomic():
        deleted, _ = Row.objects.filter(request_id=res.request_id).delete()
        usage_event_insert(res, actual_cost, data, db_held=db_held)
    return bool(deleted)


def check_open(res: Reservation) -> None:
    if res.closed:
        raise RuntimeError(f"reservation {res.request_id} was already settled or released")
    res.closed = True


# ---------------------------------------------------------------- a dead process's streams

PRICE_FIELDS = (
    "input_per_token",
    "output_per_token",
    "cached_input_per_token",
    "cache_write_per_token",
    "reasoning_per_token",
)


def progress_terms(
    res: Reservation, data: UsageEventData, price: Any, *, db_held: bool
) -> dict[str, Any]:
    """How to charge a stream if its process dies: the usage event it would have written
    (metadata only) and the price it is charged at. Kept on the hold (the first checkpoint)."""
    row = usage_event_row(res, Decimal(0), data, db_held=db_held)
    return {
        "organization_id": row["organization_id"],
        "backend": row["backend"],
        "db_held": db_held,
        "budget_periods": row["budget_periods"],
        "created_at": res.created_at.isoformat(),
        "data": row["data"],
        "reference_model": row["reference_model"],
        "price": {
            name: (str(getattr(price, name)) if getattr(price, name, None) is not None else None)
            for name in PRICE_FIELDS
        },
    }


def usage_event_from_progress(
    request_id: str, bill: dict[str, Any], output_tokens: int, held: Decimal
) -> Decimal:
    """Write the usage event of a stream whose process died, charged for the prompt estimate
    and the ``output_tokens`` it relayed (its last checkpoint), at most its hold ``held``;
    returns the cost. A usage event the process did write first wins (nothing is written
    twice)."""
    data = dict(bill["data"])
    data.update(tokens_out=output_tokens, status="incomplete")
    data["routing"] = {
        **(data.get("routing") or {}),
        "reconciled": "the process answering it stopped",
    }
    price = SimpleNamespace(
        **{k: (Decimal(v) if v is not None else None) for k, v in bill["price"].items()}
    )
    usage = SimpleNamespace(
        prompt_tokens=int(data.get("tokens_in") or 0),
        completion_tokens=output_tokens,
        cached_tokens=int(data.get("tokens_cached") or 0),
        cache_write_tokens=0,
        reasoning_tokens=0,
    )
    cost = min(usage_cost(price, usage), held)
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                request_id=request_id,
                organization_id=bill["organization_id"],
                backend=bill["backend"],
                db_held=bill["db_held"],
                cost=cost,
                budget_periods=bill["budget_periods"],
                data=data,
                reference_model=bill["reference_model"],
                created_at=dt.datetime.fromisoformat(bill["created_at"]),
            )
        ],
        ignore_conflicts=True,
    )
    return UsageEvent.objects.filter(request_id=request_id).values_list("cost", flat=True).get()
