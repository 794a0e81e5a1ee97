"""Budget threshold alerts: once per budget, period and threshold (the unique ``BudgetAlert``
row is the claim), delivered as a console notification, an email and a signed webhook."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from decimal import Decimal

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import webhooks
from billing.models import Budget, BudgetAlert, BudgetUsage, Notification
from billing.periods import LIFETIME_START, period_start
from orgs.models import Membership, Role

log = logging.getLogger(__name__)
WEBHOOK_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


def thresholds_crossed(budget: Budget, spent: Decimal) -> list[int]:
    if budget.limit_usd == 0:
        return list(budget.thresholds) if spent > 0 else []
    return [t for t in budget.thresholds if spent * 100 >= budget.limit_usd * t]


def budget_alerts_evaluate(
    *, budget_ids: Iterable[int] | None = None, now: dt.datetime | None = None
) -> list[BudgetAlert]:
    """Record and deliver every threshold newly crossed in the current period."""
    now = now or timezone.now()
    budgets = Budget.objects.select_related("organization").order_by("id")
    if budget_ids is not None:
        budgets = budgets.filter(pk__in=list(budget_ids))
    budgets_list = list(budgets)
    starts = {b.pk: period_start(b.period, now, b.organization.time_zone) for b in budgets_list}
    recent = now - dt.timedelta(days=40)
    usages = {
        (u.budget_id, u.period_start): u.spent
        for u in BudgetUsage.objects.filter(budget_id__in=list(starts)).filter(
            period_start__gte=recent
        )
        | BudgetUsage.objects.filter(budget_id__in=list(starts), period_start=LIFETIME_START)
    }
    done = set(
        BudgetAlert.objects.filter(
            budget_id__in=list(starts), period_start__gte=recent
        ).values_list("budget_id", "period_start", "threshold")
    ) | set(
        BudgetAlert.objects.filter(
            budget_id__in=list(starts), period_start=LIFETIME_START
        ).values_list("budget_id", "period_start", "threshold")
    )
    created: list[BudgetAlert] = []
    for budget in budgets_list:
        start = starts[budget.pk]
        spent = usages.get((budget.pk, start), Decimal(0))
        for threshold in thresholds_crossed(budget, spent):
            if (budget.pk, start, threshold) in done:
                continue
            alert = _claim(budget, start, threshold, spent)
            if alert is not None:
                created.append(alert)
    for alert in created:
        _deliver(alert)
    return created


def _claim(
    budget: Budget, start: dt.datetime, threshold: int, spent: Decimal
) -> BudgetAlert | None:
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                budget=budget, period_start=start, threshold=threshold, spent=spent
            )
            Notification.objects.create(
                organization_id=budget.organization_id,
                budget=budget,
                kind="budget_threshold",
                title=_title(budget, threshold),
                body=(
                    f"Spent ${spent.quantize(Decimal('0.01'))} of "
                    f"${budget.limit_usd.quantize(Decimal('0.01'))} this {budget.period} period."
                ),
                data=_payload(alert),
            )
    except IntegrityError:
        return None  # another worker claimed it
    return alert


def _title(budget: Budget, threshold: int) -> str:
    label = budget.name or (
        f"The budget of requests tagged {budget.tag}" if budget.tag else f"{budget.scope} budget"
    )
    return f"{label} reached {threshold}% of its limit"[:200]


def _payload(alert: BudgetAlert) -> dict[str, object]:
    budget = alert.budget
    return {
        "type": "budget.threshold",
        "organization": budget.organization.slug,
        "budget_id": budget.pk,
        "scope": budget.scope,
        "scope_id": budget.scope_id,
        **({"tag": budget.tag} if budget.tag else {}),
        "period": budget.period,
        "period_start": alert.period_start.isoformat(),
        "threshold": alert.threshold,
        "limit_usd": str(budget.limit_usd),
        "spent_usd": str(alert.spent),
        "mode": budget.mode,
    }


def _recipients(budget: Budget) -> list[str]:
    if budget.notify_emails:
        return list(budget.notify_emails)
    emails = (
        Membership.objects.filter(
            organization_id=budget.organization_id,
            node__parent__isnull=True,
            removed_at__isnull=True,
            role__in=[Role.OWNER, Role.ADMIN, Role.BILLING_MANAGER],
        )
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )
    return sorted(set(emails))


def _deliver(alert: BudgetAlert) -> None:
    budget = alert.budget
    payload = _payload(alert)
    recipients = _recipients(budget)
    if recipients:
        try:
            send_mail(
                subject=f"[MegaRouter] {_title(budget, alert.threshold)}",
                message=json.dumps(payload, indent=2),
                from_email=None,
                recipient_list=recipients,
            )
            alert.email_sent = True
        except Exception:
            log.exception("budget alert email failed", extra={"budget_id": budget.pk})
    if budget.webhook_url:
        alert.webhook_status = webhook_send(url=budget.webhook_url, payload=payload)
    BudgetAlert.objects.filter(pk=alert.pk).update(
        email_sent=alert.email_sent, webhook_status=alert.webhook_status
    )


def webhook_send(*, url: str, payload: dict[str, object]) -> str:
    """POST the JSON payload signed with BILLING_ALERT_WEBHOOK_SECRET; returns the outcome."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-MegaRouter-Signature": webhooks.sign(
            payload=body, secret=settings.BILLING_ALERT_WEBHOOK_SECRET
        ),
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT)
    except httpx.HTTPError as exc:
        return f"error: {type(exc).__name__}"[:64]
    return f"http {response.status_code}"
