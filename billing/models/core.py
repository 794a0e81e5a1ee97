"""Billing: prepaid balances, the append-only ledger, budgets, reservations and usage.

Money is ``Decimal`` with 12 places (fractions of a cent per token) in US dollars.

Invariants (see docs/billing.md):
- ``BillingAccount.balance`` equals the sum of the organization's ``LedgerEntry.amount``: the
  balance is moved only by ``billing.services.ledger_post``, with ``F()`` in the same
  transaction as the ledger insert. Ledger rows are never updated or deleted.
- ``held`` columns (account and budget usage) belong to the database admission backend: open
  reservations plus settled usage not yet posted to the ledger. The Redis backend keeps the same
  figure in Redis and rebuilds it from ``Reservation`` + ``UsageEvent`` + ``UsageRecord`` rows.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from orgs.models import Node, Organization

AMOUNT: dict[str, Any] = {"max_digits": 24, "decimal_places": 12}
ZERO_DEFAULT: dict[str, Any] = {**AMOUNT, "default": 0}


class ImmutableRow(Exception):
    """Raised on any attempt to change or delete a ledger row."""


class BillingAccount(models.Model):
    """An organization's prepaid balance (USD, never expiring)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="billing_account"
    )
    balance = models.DecimalField(**ZERO_DEFAULT)
    held = models.DecimalField(**ZERO_DEFAULT)
    currency = models.CharField(max_length=3, default="USD")
    # Raised with every budget change in its transaction: the version of the organization's
    # budget definitions the counters' store must hold (a lagging copy is pushed again).
    budgets_version = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # Platform operators (the people running the installation, never a tenant role):
        # enterprise transfers against a bank reference, refunds and adjustments.
        permissions = [("credit_balance", "Can record transfers, refunds and adjustments")]

    def __str__(self) -> str:
        return f"account of {self.organization_id}: {self.balance}"


class CheckoutStatus(models.TextChoices):
    OPEN = "open", "Waiting for payment"
    PAID = "paid", "Paid"


class Checkout(models.Model):
    """A card purchase of credit a billing manager started: the payment provider's signed
    ``checkout.session.completed`` webhook naming it (``client_reference_id``) credits the
    amount paid, once."""

    public_id = models.CharField(max_length=40, unique=True)  # co_<hex>, what the provider sees
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    amount = models.DecimalField(**AMOUNT)  # what the buyer asked to pay (USD)
    status = models.CharField(
        max_length=8, choices=CheckoutStatus.choices, default=CheckoutStatus.OPEN
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    payment_reference = models.CharField(max_length=255, blank=True, default="")
    ledger_entry = models.OneToOneField(
        "LedgerEntry", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.public_id


class LedgerKind(models.TextChoices):
    TOPUP = "topup", "Top-up"
    USAGE = "usage", "Usage charge"
    REFUND = "refund", "Refund"
    ADJUSTMENT = "adjustment", "Adjustment"


class LedgerQuerySet(models.QuerySet):
    def update(self, **kwargs: Any) -> int:
        raise ImmutableRow("ledger entries are append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise ImmutableRow("ledger entries are append-only")


class LedgerEntry(models.Model):
    """One movement of an organization's balance. Append-only."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    kind = models.CharField(max_length=16, choices=LedgerKind.choices)
    amount = models.DecimalField(**AMOUNT)  # signed: credits > 0, charges < 0
    balance_after = models.DecimalField(**AMOUNT)
    # Transfer reference, payment event id, usage batch: shown to people.
    reference = models.CharField(max_length=200, blank=True, default="")
    reason = models.CharField(max_length=500, blank=True, default="")
    # Unique when set: a second post with the same key is refused (payments, usage batches).
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = LedgerQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["organization", "-id"], name="billing_ledger_org_id")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.organization_id})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableRow("ledger entries are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ImmutableRow("ledger entries are append-only")


class BudgetScope(models.TextChoices):
    ORGANIZATION = "organization", "Organization"
    DEPARTMENT = "department", "Department"
    TEAM = "team", "Team"
    PROJECT = "project", "Project"
    MEMBER = "member", "Member"
    KEY = "key", "API key"
    TAG = "tag", "Request tag"


class BudgetPeriod(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    LIFETIME = "lifetime", "Lifetime"


class BudgetMode(models.TextChoices):
    BLOCK = "block", "Block requests at the limit"
    ALERT = "alert", "Alert only"


def default_thresholds() -> list[int]:
    return [50, 80, 100]


class Budget(models.Model):
    """A spending limit on one scope for a period (in the organization's time zone)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="budgets")
    # The node that governs who may see and change it (root, department, team, project, the
    # member's node or the key's project).
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="budgets")
    scope = models.CharField(max_length=16, choices=BudgetScope.choices)
    # Node id (organization/department/team/project), Membership id (member) or ApiKey id (key);
    # the root node's id for a tag budget.
    scope_id = models.BigIntegerField()
    # A tag budget's request tag, "key=value" (docs/api.md, "Request tags"): it counts every
    # request of the organization that carries the tag; "" for the other scopes.
    tag = models.CharField(max_length=200, blank=True, default="", db_default="")
    name = models.CharField(max_length=200, blank=True, default="")
    period = models.CharField(max_length=16, choices=BudgetPeriod.choices)
    limit_usd = models.DecimalField(**AMOUNT)
    thresholds = models.JSONField(default=default_thresholds)
    mode = models.CharField(max_length=8, choices=BudgetMode.choices, default=BudgetMode.BLOCK)
    notify_emails = models.JSONField(default=list, blank=True)
    webhook_url = models.URLField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When every process began applying it: set once its definition is beside the counters
    # (Redis), or at creation (the database backend reads budgets in each admission). The
    # requests admitted from then on are counted against it (billing_check verifies that).
    enforced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(limit_usd__gte=0), name="billing_budget_limit_not_negative"
            )
        ]
        indexes = [models.Index(fields=["organization", "scope", "scope_id"])]

    def __str__(self) -> str:
        return f"{self.scope}:{self.scope_id} {self.period} {self.limit_usd}"


class BudgetUsage(models.Model):
    """A budget's spend in one period. ``spent`` is posted usage (both backends); ``held`` is
    the database backend's open reservations plus settled, not yet posted usage."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="usages")
    period_start = models.DateTimeField()
    spent = models.DecimalField(**ZERO_DEFAULT)
    held = models.DecimalField(**ZERO_DEFAULT)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["budget_id", "period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start"], name="billing_budgetusage_period"
            )
        ]

    def __str__(self) -> str:
        return f"budget {self.budget_id} from {self.period_start}: {self.spent}"


class BudgetAlert(models.Model):
    """One threshold crossed in one period: the unique row is the claim that notifies once."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()
    spent = models.DecimalField(**AMOUNT)
    email_sent = models.BooleanField(default=False)
    webhook_status = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start", "threshold"], name="billing_alert_once"
            )
        ]

    def __str__(self) -> str:
        return f"budget {self.budget_id} {self.threshold}%"


class Notification(models.Model):
    """A console notification (budget thresholds, low balance)."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="notifications"
    )
    budget = models.ForeignKey(
        Budget, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=32)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["organization", "-id"], name="billing_notif_org_id")]

    def __str__(self) -> str:
        return self.title


class Reservation(models.Model):
    """An open admission (worst-case amount held). Deleted when settled or released; a row
    past its deadline was abandoned (a crashed process) and is released by reconciliation."""

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    backend = models.CharField(max_length=8)
    amount = models.DecimalField(**AMOUNT)
    tokens = models.PositiveIntegerField(default=0)
    key_id = models.BigIntegerField(null=True)
    # [[budget id, period start ISO], ...]: the counters this reservation holds.
    budget_periods = models.JSONField(default=list)
    rate_window = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    deadline = models.DateTimeField(db_index=True)
    # The process answering it (billing.admission.heartbeat) and, for a stream, what it has
    # relayed so far and how to charge that: a dead process's hold is charged from it.
    process = models.CharField(max_length=100, blank=True, default="")
    progress = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.request_id


class ProcessHeartbeat(models.Model):
    """A gateway process's last sign of life (the database admission backend's heartbeats;
    the Redis backend keeps them in Redis)."""

    process = models.CharField(max_length=100, unique=True)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.process


class UsageEvent(models.Model):
    """What settle writes durably (metadata only). Celery turns events into ``UsageRecord``
    rows and ledger charges in batches and deletes them."""

    request_id = models.CharField(max_length=64, unique=True)
    organization_id = models.BigIntegerField(db_index=True)
    backend = models.CharField(max_length=8)
    # True when the database backend counted this cost in ``held`` (posting moves it to spent).
    db_held = models.BooleanField(default=False)
    cost = models.DecimalField(**AMOUNT)
    budget_periods = models.JSONField(default=list)
    data = models.JSONField(default=dict)  # the UsageRecord fields
    # The canonical id savings are measured against (the effective routing policy's
    # ``reference_model`` at request time). "": the default reference model.
    reference_model = models.CharField(max_length=255, blank=True, default="", db_default="")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.request_id


class UsageRecord(models.Model):
    """One gateway request: ids, models, tokens, cost, timings. Never prompt or completion."""

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="usage_records"
    )
    department_id = models.BigIntegerField(null=True)
    team_id = models.BigIntegerField(null=True)
    project_id = models.BigIntegerField(null=True)
    member_id = models.BigIntegerField(null=True)
    key_id = models.BigIntegerField(null=True)
    requested_model = models.CharField(max_length=255, blank=True, default="")
    model = models.CharField(max_length=255, blank=True, default="")
    provider = models.CharField(max_length=64, blank=True, default="")
    deployment = models.CharField(max_length=160, blank=True, default="")
    strategy = models.CharField(max_length=32, blank=True, default="")
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    tokens_cached = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**AMOUNT)
    # The cached-input discount given up when routing moved a conversation off the deployment
    # holding its prompt cache (the explanation's prompt_cache.cache_lost_usd; 0 otherwise).
    cache_lost = models.DecimalField(**AMOUNT, default=0, db_default=0)
    price_version_id = models.BigIntegerField(null=True)
    latency_ms = models.PositiveIntegerField(null=True)
    ttft_ms = models.PositiveIntegerField(null=True)
    status = models.CharField(max_length=32, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=1)
    fallback_used = models.BooleanField(default=False)
    routing = models.JSONField(default=dict, blank=True)
    # [[budget id, period start ISO], ...] the request was admitted against (its spend)
    budget_periods = models.JSONField(default=list, blank=True)
    # The canonical catalog id savings are measured against: the effective routing policy's
    # ``reference_model`` when the request was made (nearest level wins, the request's own
    # override included). "" (records from before it was recorded, and loaders that do not
    # name the column: the database default): the default,
    # ``settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL``. See billing.analytics.reference.
    reference_model = models.CharField(max_length=255, blank=True, default="", db_default="")
    # The caller's request tags ({"feature": "search", "env": "prod", "user": "u-42"}): from
    # the x-megarouter-tags header, OpenAI's metadata and user, Anthropic's metadata.user_id;
    # bounded (docs/api.md, "Request tags"); analytics filter and group on them.
    tags = models.JSONField(default=dict, blank=True, db_default={})
    ledger_entry = models.ForeignKey(
        LedgerEntry, null=True, on_delete=models.PROTECT, related_name="usage_records"
    )
    created_at = models.DateTimeField()  # when the request was admitted
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="billing_usage_org_time"),
            models.Index(
                fields=["organization", "key_id", "created_at"], name="billing_usage_org_key"
            ),
            models.Index(
                fields=["organization", "project_id", "created_at"],
                name="billing_usage_org_project",
            ),
        ]

    def __str__(self) -> str:
        return self.request_id


class PaymentEvent(models.Model):
    """A payment provider webhook event, kept once by its id (idempotency)."""

    provider = models.CharField(max_length=32)
    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    organization = models.ForeignKey(
        Organization, null=True, on_delete=models.PROTECT, related_name="+"
    )
    amount = models.DecimalField(**AMOUNT, null=True)
    status = models.CharField(max_length=16)  # applied | ignored
    detail = models.CharField(max_length=300, blank=True, default="")
    ledger_entry = models.ForeignKey(
        LedgerEntry, null=True, on_delete=models.PROTECT, related_name="+"
    )
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.event_id


class RateWindow(models.Model):
    """Requests and tokens of one key in one minute (database admission backend)."""

    key_id = models.BigIntegerField()
    window_start = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key_id", "window_start"], name="billing_ratewindow_key_window"
            )
        ]

    def __str__(self) -> str:
        return f"key {self.key_id} @ {self.window_start}"
