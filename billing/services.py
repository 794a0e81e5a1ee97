"""Billing writes: the ledger, top-ups, refunds, adjustments, payments, budgets, usage posting.

``ledger_post`` is the only code that moves a balance: an ``F()`` update of the account and the
ledger insert in one transaction. Everything else calls it.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from billing import counters
from billing.admission import get_backend
from billing.admission.db import DatabaseBackend
from billing.errors import BillingError, InvalidInput
from billing.models import (
    AMOUNT,
    BillingAccount,
    Budget,
    BudgetMode,
    BudgetPeriod,
    BudgetScope,
    BudgetUsage,
    Checkout,
    CheckoutStatus,
    LedgerEntry,
    LedgerKind,
    PaymentEvent,
    UsageEvent,
    UsageRecord,
)
from billing.models import Reservation as ReservationRow
from billing.periods import period_start
from orgs.audit import Actor, audit_event_record, diff
from orgs.errors import NotAllowed
from orgs.models import ApiKey, Membership, Node, NodeKind, Organization
from routing.pricing import PLACES

MAX_AMOUNT = Decimal(10) ** (AMOUNT["max_digits"] - AMOUNT["decimal_places"] - 1)
MAX_TOPUP = Decimal("10000000")  # one top-up, refund or adjustment: at most $10M


# ---------------------------------------------------------------- amounts


def parse_amount(value: Any, *, field: str = "amount", allow_negative: bool = False) -> Decimal:
    """A Decimal from a string or int (floats are refused: money never passes through them)."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidInput({field: ['Give the amount as a decimal string, e.g. "25.00".']})
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput({field: ["Not a decimal number."]}) from None
    if not amount.is_finite():
        raise InvalidInput({field: ["Not a finite number."]})
    if amount != amount.quantize(PLACES):
        raise InvalidInput({field: ["At most 12 decimal places."]})
    if not allow_negative and amount <= 0:
        raise InvalidInput({field: ["Must be greater than zero."]})
    if allow_negative and amount == 0:
        raise InvalidInput({field: ["Must not be zero."]})
    if abs(amount) > MAX_TOPUP:
        raise InvalidInput({field: [f"At most {MAX_TOPUP} per operation."]})
    return amount


def _clean_text(value: Any, *, field: str, required: bool, max_length: int) -> str:
    text = (value or "").strip() if isinstance(value, str | type(None)) else None
    if text is None:
        raise InvalidInput({field: ["Must be text."]})
    if required and not text:
        raise InvalidInput({field: ["This field is required."]})
    if len(text) > max_length:
        raise InvalidInput({field: [f"At most {max_length} characters."]})
    return text


# ---------------------------------------------------------------- the ledger


def account_for(organization_id: int) -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(organization_id=organization_id)
    return account


def ledger_post(
    *,
    organization_id: int,
    kind: str,
    amount: Decimal,
    reference: str = "",
    reason: str = "",
    idempotency_key: str | None = None,
    created_by: Any = None,
    min_available_after: Decimal | None = None,
) -> LedgerEntry:
    """Move the balance by ``amount`` and append the ledger row, in the caller's transaction.

    ``min_available_after``: refuse (BillingError ``insufficient_balance``) unless
    ``balance - held + amount`` stays at or above it (refunds and debits by admins)."""
    if not connection.in_atomic_block:
        raise RuntimeError("ledger_post must run inside a transaction")
    if kind not in LedgerKind.values:
        raise ValueError(f"unknown ledger kind {kind!r}")
    BillingAccount.objects.get_or_create(organization_id=organization_id)
    rows = BillingAccount.objects.filter(organization_id=organization_id)
    if min_available_after is not None:
        rows = rows.filter(balance__gte=F("held") + (min_available_after - amount))
    if rows.update(balance=F("balance") + amount) != 1:
        raise BillingError("The balance does not cover this.", code="insufficient_balance")
    balance_after = (
        BillingAccount.objects.filter(organization_id=organization_id)
        .values_list("balance", flat=True)
        .get()
    )
    return LedgerEntry.objects.create(
        organization_id=organization_id,
        kind=kind,
        amount=amount,
        balance_after=balance_after,
        reference=reference[:200],
        reason=reason[:500],
        idempotency_key=idempotency_key,
        created_by=created_by,
    )


def _balance_changed(organization_id: int, delta: Decimal) -> None:
    transaction.on_commit(lambda: counters.balance_changed(organization_id, delta))


# ---------------------------------------------------------------- credit: only real money


def operator_required(actor: Actor) -> None:
    """Credit, refunds and adjustments are platform operators' (the people running this
    installation: staff with ``billing.credit_balance``, or the system itself), never a tenant
    role's. Raises NotAllowed otherwise."""
    user = actor.user
    if actor.service_token is not None:
        raise NotAllowed("A service token may not credit, refund or adjust a balance.")
    if actor.is_system:
        return  # the system: migrations, seeds, the payment webhook
    if not (user.is_active and user.is_staff and user.has_perm("billing.credit_balance")):
        raise NotAllowed(
            "Only a platform operator may credit, refund or adjust a balance; buy credit with "
            "a checkout instead.",
        )


def transfer_record(
    *, actor: Actor, organization: Organization, amount: Any, reference: str, reason: str = ""
) -> LedgerEntry:
    """An enterprise bank transfer a platform operator received: ``amount`` (USD) credited
    against the transfer's bank ``reference``, which can be credited only once."""
    operator_required(actor)
    value = parse_amount(amount)
    ref = _clean_text(reference, field="reference", required=True, max_length=200)
    why = _clean_text(reason, field="reason", required=False, max_length=500)
    try:
        with transaction.atomic():
            entry = ledger_post(
                organization_id=organization.pk,
                kind=LedgerKind.TOPUP,
                amount=value,
                reference=ref,
                reason=why or "enterprise transfer",
                idempotency_key=f"transfer:{ref.casefold()}",
                created_by=actor.user,
            )
            audit_event_record(
                organization=organization,
                actor=actor,
                action="billing.transfer",
                target=entry,
                changes={
                    "amount": value,
                    "reference": ref,
                    "reason": why,
                    "balance_after": entry.balance_after,
                },
            )
            _balance_changed(organization.pk, entry.amount)
    except IntegrityError:
        raise InvalidInput({"reference": ["This bank reference was already credited."]}) from None
    return entry


def balance_refund(
    *, actor: Actor, organization: Organization, amount: Any, reason: str
) -> LedgerEntry:
    """A platform operator pays ``amount`` of the prepaid balance back to the customer (lowers
    the balance; refused beyond what is available)."""
    operator_required(actor)
    value = parse_amount(amount)
    why = _clean_text(reason, field="reason", required=True, max_length=500)
    with transaction.atomic():
        entry = ledger_post(
            organization_id=organization.pk,
            kind=LedgerKind.REFUND,
            amount=-value,
            reason=why,
            created_by=actor.user,
            min_available_after=Decimal(0),
        )
        audit_event_record(
            organization=organization,
            actor=actor,
            action="billing.refund",
            target=entry,
            changes={"amount": -value, "reason": why, "balance_after": entry.balance_after},
        )
        _balance_changed(organization.pk, entry.amount)
    return entry


def balance_adjust(
    *, actor: Actor, organization: Organization, amount: Any, reason: str
) -> LedgerEntry:
    """A signed correction by a platform operator (credit > 0, debit < 0; a debit may not take
    the available balance below zero)."""
    operator_required(actor)
    value = parse_amount(amount, allow_negative=True)
    why = _clean_text(reason, field="reason", required=True, max_length=500)
    with transaction.atomic():
        entry = ledger_post(
            organization_id=organization.pk,
            kind=LedgerKind.ADJUSTMENT,
            amount=value,
            reason=why,
            created_by=actor.user,
            min_available_after=Decimal(0) if value < 0 else None,
        )
        audit_event_record(
            organization=organization,
            actor=actor,
            action="billing.adjust",
            target=entry,
            changes={"amount": value, "reason": why, "balance_after": entry.balance_after},
        )
        _balance_changed(organization.pk, entry.amount)
    return entry


MIN_CHECKOUT = Decimal("5")


def checkout_create(*, actor: Actor, organization: Organization, amount: Any) -> Checkout:
    """A card purchase of ``amount`` USD started by someone who manages billing (the caller
    checked ``manage_billing``). Nothing is credited until the payment provider's signed
    webhook says it was paid."""
    value = parse_amount(amount)
    if value < MIN_CHECKOUT or value != value.quantize(Decimal("0.01")):
        raise InvalidInput({"amount": [f"At least {MIN_CHECKOUT} USD, in whole cents."]})
    with transaction.atomic():
        checkout = Checkout.objects.create(
            public_id=f"co_{secrets.token_hex(12)}",
            organization=organization,
            amount=value,
            created_by=actor.user,
        )
        audit_event_record(
            organization=organization,
            actor=actor,
            action="billing.checkout",
            target=checkout,
            target_repr=checkout.public_id,
            changes={"amount": value},
        )
    return checkout


def checkout_pay_url(checkout: Checkout) -> str:
    """Where the buyer pays: ``BILLING_CHECKOUT_URL`` with the checkout's id, amount and
    organization filled in ("" when no payment provider is configured)."""
    template = settings.BILLING_CHECKOUT_URL
    if not template:
        return ""
    return template.format(
        id=checkout.public_id,
        amount=format(checkout.amount, "f"),
        cents=int(checkout.amount * 100),
        organization=checkout.organization.slug,
    )


def payment_event_apply(*, provider: str, event: dict[str, Any]) -> PaymentEvent:
    """Apply a verified payment provider event (see billing.webhooks). Only a completed
    checkout credits: ``checkout.session.completed`` naming an open checkout of the
    organization (``client_reference_id``, ``metadata.organization``) credits the amount paid,
    once (the checkout is claimed with a conditional update; the event id is unique too).
    Idempotent: a second delivery returns the stored row and changes nothing."""
    event_id = str(event.get("id") or "")
    if not event_id or len(event_id) > 255:
        raise InvalidInput({"id": ["The event has no valid id."]})
    existing = PaymentEvent.objects.filter(event_id=event_id).first()
    if existing is not None:
        return existing
    event_type = str(event.get("type") or "")[:100]
    obj = (event.get("data") or {}).get("object") or {}
    try:
        with transaction.atomic():
            if event_type != "checkout.session.completed":
                return PaymentEvent.objects.create(
                    provider=provider,
                    event_id=event_id,
                    type=event_type,
                    status="ignored",
                    detail="event type not handled",
                )
            checkout, amount = _paid_checkout(obj)
            if checkout.status != CheckoutStatus.OPEN:  # paid by an earlier event
                return PaymentEvent.objects.create(
                    provider=provider,
                    event_id=event_id,
                    type=event_type,
                    organization_id=checkout.organization_id,
                    status="ignored",
                    detail=f"checkout {checkout.public_id} was already paid",
                )
            entry = ledger_post(
                organization_id=checkout.organization_id,
                kind=LedgerKind.TOPUP,
                amount=amount,
                reference=f"{provider}:{obj.get('payment_intent') or event_id}",
                reason=f"card payment, checkout {checkout.public_id}",
                idempotency_key=f"payment:{provider}:{event_id}",
                created_by=checkout.created_by,
            )
            claimed = Checkout.objects.filter(pk=checkout.pk, status=CheckoutStatus.OPEN).update(
                status=CheckoutStatus.PAID,
                paid_at=timezone.now(),
                payment_reference=f"{provider}:{event_id}"[:255],
                ledger_entry=entry,
            )
            if claimed != 1:
                raise InvalidInput({"client_reference_id": ["The checkout is already paid."]})
            payment = PaymentEvent.objects.create(
                provider=provider,
                event_id=event_id,
                type=event_type,
                organization_id=checkout.organization_id,
                amount=amount,
                status="applied",
                ledger_entry=entry,
            )
            audit_event_record(
                organization=checkout.organization,
                actor=Actor.system(),
                action="billing.payment",
                target=entry,
                changes={
                    "amount": amount,
                    "checkout": checkout.public_id,
                    "event_id": event_id,
                    "provider": provider,
                },
            )
            _balance_changed(checkout.organization_id, amount)
            return payment
    except IntegrityError:
        # A concurrent delivery of the same event won the race: it is applied once.
        return PaymentEvent.objects.get(event_id=event_id)


def _paid_checkout(obj: dict[str, Any]) -> tuple[Checkout, Decimal]:
    """The open checkout a completed session pays, and the amount paid (USD)."""
    cents = obj.get("amount_total")
    currency = str(obj.get("currency") or "").lower()
    org_ref = (obj.get("metadata") or {}).get("organization")
    if isinstance(cents, bool) or not isinstance(cents, int) or cents <= 0:
        raise InvalidInput({"amount": ["The event has no positive amount in cents."]})
    if currency != "usd":
        raise InvalidInput({"currency": ["Only USD payments are accepted."]})
    if obj.get("payment_status", "paid") != "paid":
        raise InvalidInput({"payment_status": ["The session is not paid."]})
    checkout = (
        Checkout.objects.select_related("organization")
        .filter(public_id=str(obj.get("client_reference_id") or ""))
        .first()
    )
    if checkout is None or checkout.organization.slug != str(org_ref or ""):
        raise InvalidInput({"client_reference_id": ["No checkout of this organization."]})
    return checkout, Decimal(cents) / 100


# ---------------------------------------------------------------- budgets

_SCOPE_NODE_KIND = {
    BudgetScope.DEPARTMENT: NodeKind.DEPARTMENT,
    BudgetScope.TEAM: NodeKind.TEAM,
    BudgetScope.PROJECT: NodeKind.PROJECT,
}


def budget_scope_node(*, organization: Organization, scope: str, scope_id: Any) -> tuple[int, Node]:
    """Validate the scope and return (scope id, governing node). Unknown scopes or ids of
    another organization are refused with the same error."""
    if scope not in BudgetScope.values:
        raise InvalidInput({"scope": [f"Must be one of {', '.join(BudgetScope.values)}."]})
    if scope in (BudgetScope.ORGANIZATION, BudgetScope.TAG):  # a tag spans the organization
        root = Node.objects.get(organization=organization, parent__isnull=True)
        return root.pk, root
    if isinstance(scope_id, bool) or not isinstance(scope_id, int):
        raise InvalidInput({"scope_id": ["Required for this scope (an id)."]})
    missing = InvalidInput({"scope_id": [f"No {scope} with this id in the organization."]})
    if scope in _SCOPE_NODE_KIND:
        node = Node.objects.filter(
            organization=organization, pk=scope_id, kind=_SCOPE_NODE_KIND[scope]
        ).first()
        if node is None:
            raise missing
        return node.pk, node
    if scope == BudgetScope.MEMBER:
        membership = (
            Membership.objects.filter(organization=organization, pk=scope_id)
            .select_related("node")
            .first()
        )
        if membership is None:
            raise missing
        return membership.pk, membership.node
    key = ApiKey.objects.filter(organization=organization, pk=scope_id).select_related("project")
    found = key.first()
    if found is None:
        raise missing
    return found.pk, found.project


# A tag budget's tag: "key=value" as requests carry it (gateway.wire.common.request_tags).
BUDGET_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]{0,62}[A-Za-z0-9])?=[^,|]{1,128}")


def _clean_budget_tag(scope: str, tag: Any) -> str:
    if scope != BudgetScope.TAG:
        if tag:
            raise InvalidInput({"tag": ["Only a tag budget has a tag."]})
        return ""
    value = tag.strip() if isinstance(tag, str) else ""
    if (
        not BUDGET_TAG.fullmatch(value)
        or "__" in value.partition("=")[0]
        or not value.isprintable()
    ):
        raise InvalidInput(
            {"tag": ['A request tag as "key=value" (feature=search): the key of letters, digits, '
                     '_ . : - up to 64 characters; the value up to 128, without "," or "|".']}
        )  # fmt: skip
    return value


def _clean_budget_fields(values: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    if "limit_usd" in values:
        raw = values["limit_usd"]
        try:
            if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal):
                raise InvalidOperation
            limit = Decimal(str(raw))
            if not limit.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            errors["limit_usd"] = ['Give the limit as a decimal string, e.g. "100.00".']
        else:
            if limit < 0:
                errors["limit_usd"] = ["Must be zero or more."]
            elif limit != limit.quantize(PLACES) or limit >= MAX_AMOUNT:
                errors["limit_usd"] = ["Too many digits."]
            else:
                out["limit_usd"] = limit
    if "period" in values:
        if values["period"] not in BudgetPeriod.values:
            errors["period"] = [f"Must be one of {', '.join(BudgetPeriod.values)}."]
        else:
            out["period"] = values["period"]
    if "mode" in values:
        if values["mode"] not in BudgetMode.values:
            errors["mode"] = [f"Must be one of {', '.join(BudgetMode.values)}."]
        else:
            out["mode"] = values["mode"]
    if "thresholds" in values:
        raw = values["thresholds"]
        ok = isinstance(raw, list) and all(
            isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 1000 for t in raw
        )
        if not ok or len(raw) > 10:
            errors["thresholds"] = ["A list of up to 10 whole percentages from 1 to 1000."]
        else:
            out["thresholds"] = sorted(set(raw))
    if "notify_emails" in values:
        raw = values["notify_emails"]
        if not isinstance(raw, list) or not all(
            isinstance(e, str) and "@" in e and len(e) <= 254 for e in raw
        ):
            errors["notify_emails"] = ["A list of email addresses."]
        else:
            out["notify_emails"] = raw[:20]
    if "webhook_url" in values:
        url = values["webhook_url"] or ""
        parts = urlsplit(url) if isinstance(url, str) else None
        if url and (parts is None or parts.scheme not in ("http", "https") or not parts.netloc):
            errors["webhook_url"] = ["An http(s) URL."]
        else:
            out["webhook_url"] = url
    if "name" in values:
        name = values["name"] if isinstance(values["name"], str) else None
        if name is None or len(name) > 200:
            errors["name"] = ["At most 200 characters."]
        else:
            out["name"] = name.strip()
    if errors:
        raise InvalidInput(errors)
    return out


def _budgets_changed(organization_id: int) -> None:
    """In the change's transaction: raise the definitions' version; after commit, push them to
    the counters' store (a failed push is repeated by reconciliation, which compares versions)."""
    account_for(organization_id)
    BillingAccount.objects.filter(organization_id=organization_id).update(
        budgets_version=F("budgets_version") + 1
    )
    transaction.on_commit(lambda: counters.budgets_changed(organization_id))


def budget_create(
    *,
    actor: Actor,
    organization: Organization,
    scope: str,
    scope_id: int | None = None,
    period: str,
    limit_usd: Any,
    mode: str = BudgetMode.BLOCK,
    thresholds: list[int] | None = None,
    name: str = "",
    notify_emails: list[str] | None = None,
    webhook_url: str = "",
    tag: str = "",
) -> Budget:
    resolved_id, node = budget_scope_node(organization=organization, scope=scope, scope_id=scope_id)
    tag = _clean_budget_tag(scope, tag)
    fields = _clean_budget_fields(
        {
            "period": period,
            "limit_usd": limit_usd,
            "mode": mode,
            "thresholds": [50, 80, 100] if thresholds is None else thresholds,
            "name": name,
            "notify_emails": notify_emails or [],
            "webhook_url": webhook_url,
        }
    )
    with transaction.atomic():
        budget = Budget.objects.create(
            organization=organization,
            node=node,
            scope=scope,
            scope_id=resolved_id,
            tag=tag,
            **fields,
        )
        audit_event_record(
            organization=organization,
            actor=actor,
            action="budget.create",
            target=budget,
            changes={
                "scope": scope,
                "scope_id": resolved_id,
                **({"tag": tag} if tag else {}),
                **fields,
            },
        )
        _budgets_changed(organization.pk)
    return budget


BUDGET_UPDATABLE = ("name", "limit_usd", "mode", "thresholds", "notify_emails", "webhook_url")


def budget_update(*, actor: Actor, budget: Budget, **values: Any) -> Budget:
    """Change a budget's limit, mode, thresholds or notifications (scope and period are fixed:
    make a new budget instead)."""
    unknown = sorted(set(values) - set(BUDGET_UPDATABLE))
    if unknown:
        raise InvalidInput({name: ["This field cannot be changed."] for name in unknown})
    fields = _clean_budget_fields(values)
    with transaction.atomic():
        locked = Budget.objects.select_for_update().get(pk=budget.pk)
        changes = diff(locked, fields)
        for name, value in fields.items():
            setattr(locked, name, value)
        locked.save()
        audit_event_record(
            organization=locked.organization_id,
            actor=actor,
            action="budget.update",
            target=locked,
            changes=changes,
        )
        _budgets_changed(locked.organization_id)
    return locked


def budget_delete(*, actor: Actor, budget: Budget) -> None:
    with transaction.atomic():
        audit_event_record(
            organization=budget.organization_id,
            actor=actor,
            action="budget.delete",
            target=budget,
            changes={"scope": budget.scope, "scope_id": budget.scope_id},
        )
        Budget.objects.filter(pk=budget.pk).delete()
        _budgets_changed(budget.organization_id)


# ---------------------------------------------------------------- usage posting

RECORD_FIELDS = (
    "department_id",
    "team_id",
    "project_id",
    "member_id",
    "key_id",
    "requested_model",
    "model",
    "provider",
    "deployment",
    "strategy",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "price_version_id",
    "latency_ms",
    "ttft_ms",
    "status",
    "attempts",
    "fallback_used",
    "routing",
    "reference_model",
    "tags",
)


@dataclass
class PostResult:
    events: int = 0
    budget_ids: set[int] = field(default_factory=set)


def usage_events_post(*, limit: int = 2000) -> PostResult:
    """Turn up to ``limit`` usage events into usage records, one ledger charge per organization
    per batch, and budget spend; delete the events. Idempotent: events are claimed under lock
    and records are unique by request id. Returns how many events were consumed."""
    with transaction.atomic():
        events_qs = UsageEvent.objects.order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            events_qs = events_qs.select_for_update(skip_locked=True)
        events = list(events_qs[:limit])
        if not events:
            return PostResult()
        already = set(
            UsageRecord.objects.filter(request_id__in=[e.request_id for e in events]).values_list(
                "request_id", flat=True
            )
        )
        by_org: dict[int, list[UsageEvent]] = defaultdict(list)
        for event in events:
            if event.request_id not in already:
                by_org[event.organization_id].append(event)
        spend: dict[tuple[int, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        db_held_by_org: dict[int, Decimal] = defaultdict(Decimal)
        for org_id, org_events in by_org.items():
            for e in org_events:
                for budget_id, start in e.budget_periods:
                    acc = spend[(budget_id, start)]
                    acc[0] += e.cost
                    if e.db_held:
                        acc[1] += e.cost
                if e.db_held:
                    db_held_by_org[org_id] += e.cost
        # The lock order of every writer of these rows (reserve, settle, this): budget usage
        # rows by budget id, then accounts. Another order deadlocks against a reserve.
        _budget_spend_apply(spend)
        for org_id, org_events in sorted(by_org.items()):
            total = sum((e.cost for e in org_events), Decimal(0))
            entry = ledger_post(
                organization_id=org_id,
                kind=LedgerKind.USAGE,
                amount=-total,
                reference=f"{len(org_events)} requests",
                reason="usage",
                idempotency_key=f"usage:{org_events[0].request_id}:{org_events[-1].request_id}",
            )
            if db_held_by_org.get(org_id):
                BillingAccount.objects.filter(organization_id=org_id).update(
                    held=F("held") - db_held_by_org[org_id]
                )
            UsageRecord.objects.bulk_create(
                [_record_from_event(e, entry) for e in org_events], batch_size=500
            )
        UsageEvent.objects.filter(pk__in=[e.pk for e in events]).delete()
    return PostResult(events=len(events), budget_ids={b for b, _ in spend})


def _record_from_event(event: UsageEvent, entry: LedgerEntry) -> UsageRecord:
    data = event.data
    fields = {name: data[name] for name in RECORD_FIELDS if name in data}
    # The event's column, else its data ("": the default reference model).
    fields["reference_model"] = event.reference_model or data.get("reference_model") or ""
    fields["cache_lost"] = _cache_lost(data.get("routing"))
    return UsageRecord(
        request_id=event.request_id,
        organization_id=event.organization_id,
        cost=event.cost,
        ledger_entry=entry,
        created_at=event.created_at,
        budget_periods=event.budget_periods,
        **fields,
    )


def _cache_lost(routing: Any) -> Decimal:
    """The routing explanation's prompt_cache.cache_lost_usd (0 when absent or unreadable)."""
    try:
        raw = routing["explain"]["prompt_cache"]["cache_lost_usd"]
        return max(Decimal(str(raw)), Decimal(0))
    except (KeyError, TypeError, ArithmeticError, ValueError):
        return Decimal(0)


def _budget_spend_apply(spend: dict[tuple[int, str], list[Decimal]]) -> None:
    """spent += cost (and held -= the database backend's share), in a fixed order."""
    if not spend:
        return
    existing_budgets = set(
        Budget.objects.filter(pk__in={b for b, _ in spend}).values_list("pk", flat=True)
    )
    for (budget_id, start), (cost, held) in sorted(spend.items()):
        if budget_id not in existing_budgets:
            continue
        period_start = dt.datetime.fromisoformat(start)
        updated = BudgetUsage.objects.filter(budget_id=budget_id, period_start=period_start).update(
            spent=F("spent") + cost, held=F("held") - held
        )
        if not updated:
            BudgetUsage.objects.create(
                budget_id=budget_id, period_start=period_start, spent=cost, held=-held
            )


def account_check() -> list[tuple[int, Decimal, Decimal]]:
    """Accounts whose balance differs from their ledger sum: [(org id, balance, ledger sum)].
    Empty when the books balance (run by tests and ``manage.py billing_check``).

    The sum is taken in Python over the stored rows. On PostgreSQL the comparison is exact;
    SQLite (embedded mode) stores 15 significant digits, so there a difference within that
    precision is not reported."""
    sums: dict[int, Decimal] = defaultdict(Decimal)
    for org_id, amount in LedgerEntry.objects.values_list("organization_id", "amount").iterator():
        sums[org_id] += amount
    sqlite = connection.vendor == "sqlite"
    out = []
    for org_id, balance in BillingAccount.objects.values_list("organization_id", "balance"):
        total = sums.pop(org_id, Decimal(0))
        tolerance = (abs(balance) * Decimal("1e-14") + Decimal("1e-12")) if sqlite else 0
        if abs(total - balance) > tolerance:
            out.append((org_id, balance, total))
    for org_id, total in sums.items():
        out.append((org_id, Decimal(0), total))
    return out


# ---------------------------------------------------------------- reconciliation and periods

RECONCILE_GRACE = dt.timedelta(seconds=60)


def reservations_reconcile(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Close the holds nobody will finish: past their deadline, or made by a process whose
    heartbeat stopped (a crashed or killed worker; billing.admission.heartbeat). A stream's
    relayed output is charged from its last checkpoint; a hold whose usage event reached the
    database is settled from it; the rest is released. Runs every 15 s (Celery beat)."""
    now = now or timezone.now()
    out = DatabaseBackend().reconcile_sync(now=now)
    backend = get_backend()
    if getattr(backend, "name", "") == "redis":
        pushed = backend.budget_definitions_sync()
        if pushed:  # a push that failed after its budget change committed
            out["budget_definitions_pushed"] = pushed
        counts = backend.reconcile_sync(now=now)
        out["released"] += counts["released"]
        out["settled"] += counts["settled"]
        ReservationRow.objects.filter(backend="redis", deadline__lt=now - RECONCILE_GRACE).delete()
    return out


def budget_periods_roll(*, now: dt.datetime | None = None) -> int:
    """Open the current period's usage row of every budget (a new period starts from zero:
    the counters are keyed by period, so the reset needs no write to the old ones)."""
    now = now or timezone.now()
    rows = [
        BudgetUsage(
            budget_id=b.pk, period_start=period_start(b.period, now, b.organization.time_zone)
        )
        for b in Budget.objects.select_related("organization").only(
            "id", "period", "organization__time_zone"
        )
    ]
    BudgetUsage.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return len(rows)
