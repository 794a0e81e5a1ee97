"""Analytics tables: usage rollups, the rollup watermark and report rows.

Imported by ``billing/models.py`` so Django registers them with the ``billing`` app.

Rollups hold sums only (never content). Dimensions are stored NOT NULL (0 / "" for "none") so
the unique constraint that the incremental upsert relies on treats "none" as one value.

Cardinality decides the tables (10 million requests a month over 20,000 keys barely compress
at key level, so dashboards read coarser tables):

- ``UsageRollupDayTeam``: UTC days by department, team, model, provider (the dashboards);
- ``UsageRollupDayNode``: the same plus project;
- ``UsageRollupDayKey``: UTC days by department, team, project, member, key (top keys);
- ``UsageRollupDay``: UTC days by every dimension (member, key, strategy, status);
- ``UsageRollupHour``: hours by department, team, model, provider (recent hour series, and day
  series of organizations whose days are not UTC days).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from billing.models.core import AMOUNT
from orgs.models import Node, Organization

__all__ = [
    "FailedRequestCount",
    "Report",
    "ReportKind",
    "ReportStatus",
    "RollupWatermark",
    "UsageRollupDay",
    "UsageRollupDayKey",
    "UsageRollupDayNode",
    "UsageRollupDayTeam",
    "UsageRollupHour",
]


# ``reference_model`` (the canonical id savings were measured against) is a dimension of every
# table: it rarely varies inside a team, so it barely adds rows, and it lets every answer say
# which reference models its savings are against.
TEAM_DIMS = ("department_id", "team_id", "model", "provider", "reference_model")
NODE_DIMS = ("department_id", "team_id", "project_id", "model", "provider", "reference_model")
KEY_DIMS = ("department_id", "team_id", "project_id", "member_id", "key_id", "reference_model")
ALL_DIMS = (
    "department_id",
    "team_id",
    "project_id",
    "member_id",
    "key_id",
    "model",
    "provider",
    "strategy",
    "status",
    "reference_model",
)
MEASURES = (
    "requests",
    "errors",
    "fallbacks",
    "attempts",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "cost",
    "reference_cost",
    "cache_lost",
    "latency_ms_sum",
    "latency_count",
    "ttft_ms_sum",
    "ttft_count",
)


MONEY = ("cost", "reference_cost", "cache_lost")  # the measures in US dollars (Decimal)


class RollupMeasures(models.Model):
    """Organization, bucket, department and team, and every measure."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    bucket = models.DateTimeField()
    department_id = models.BigIntegerField(default=0)
    team_id = models.BigIntegerField(default=0)
    # The reference model of the requests summed here (never "": legacy records without one
    # are stored under the default reference model).
    reference_model = models.CharField(max_length=255, default="")

    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)  # status other than "ok"
    fallbacks = models.BigIntegerField(default=0)
    attempts = models.BigIntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    tokens_cached = models.BigIntegerField(default=0)
    cost = models.DecimalField(**AMOUNT, default=0)
    # What the same tokens would have cost on the reference model (savings = this - cost).
    reference_cost = models.DecimalField(**AMOUNT, default=0)
    # The cached-input discount routing gave up by switching conversations (net savings =
    # reference_cost - cost - this).
    cache_lost = models.DecimalField(**AMOUNT, default=0)
    latency_ms_sum = models.BigIntegerField(default=0)
    latency_count = models.BigIntegerField(default=0)
    ttft_ms_sum = models.BigIntegerField(default=0)
    ttft_count = models.BigIntegerField(default=0)

    DIMS: tuple[str, ...] = ("department_id", "team_id", "reference_model")
    GRAIN = "hour"

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.GRAIN} {self.bucket:%Y-%m-%d %H:00} org {self.organization_id}"


class RollupBase(RollupMeasures):
    """Team-level dimensions with model and provider; subclasses add dimensions."""

    model = models.CharField(max_length=255, default="")
    provider = models.CharField(max_length=64, default="")

    DIMS = TEAM_DIMS

    class Meta:
        abstract = True


class UsageRollupHour(RollupBase):
    """Hours by department, team, model, provider."""

    GRAIN = "hour"

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *TEAM_DIMS], name="billing_rollup_hour_team_key"
            )
        ]


class UsageRollupDayTeam(RollupBase):
    """UTC days by department, team, model, provider: the dashboards."""

    GRAIN = "day"

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *TEAM_DIMS], name="billing_rollup_dayteam_key"
            )
        ]


class UsageRollupDayNode(RollupBase):
    """UTC days by department, team, project, model, provider."""

    project_id = models.BigIntegerField(default=0)

    DIMS = NODE_DIMS
    GRAIN = "day"

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *NODE_DIMS],
                name="billing_rollup_daynode_project_key",
            )
        ]


class UsageRollupDayKey(RollupMeasures):
    """UTC days by department, team, project, member, key (no model): top keys and members."""

    project_id = models.BigIntegerField(default=0)
    member_id = models.BigIntegerField(default=0)
    key_id = models.BigIntegerField(default=0)

    DIMS = KEY_DIMS
    GRAIN = "day"

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *KEY_DIMS], name="billing_rollup_daykey_key"
            )
        ]


class UsageRollupDay(RollupBase):
    """UTC days by every dimension (member, key, strategy, status too)."""

    project_id = models.BigIntegerField(default=0)
    member_id = models.BigIntegerField(default=0)
    key_id = models.BigIntegerField(default=0)
    strategy = models.CharField(max_length=32, default="")
    status = models.CharField(max_length=32, default="")

    DIMS = ALL_DIMS
    GRAIN = "day"

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "bucket", *ALL_DIMS], name="billing_rollup_day_key"
            )
        ]


# Smallest first: the selectors take the first one that answers a query.
ROLLUP_MODELS: tuple[type[RollupMeasures], ...] = (
    UsageRollupDayTeam,
    UsageRollupDayNode,
    UsageRollupDayKey,
    UsageRollupDay,
    UsageRollupHour,
)


FAILURE_DIMS = ("key_id", "model", "provider", "status", "code")


class FailedRequestCount(models.Model):
    """Requests an organization's keys made that did not succeed, counted per UTC hour:
    refused (invalid input, unknown model, budget, rate limit), failed (no deployment answered)
    and streams ended by an error or a departed client. Metadata only, like the usage records;
    requests a usage record charged (a stream cut short) are counted here too, ``charged``
    says which. Unauthenticated requests belong to no organization and are not counted
    (the ``megarouter_requests_total`` metric has them). Written by ``billing.failures``."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="failed_request_counts"
    )
    hour = models.DateTimeField()
    department_id = models.BigIntegerField(default=0)
    team_id = models.BigIntegerField(default=0)
    project_id = models.BigIntegerField(default=0)
    member_id = models.BigIntegerField(default=0)
    key_id = models.BigIntegerField()
    # The canonical model and provider of the last deployment tried, else the model asked for
    # when it is a known model or routing alias ("" when the name is unknown: a caller's typos
    # must not grow this table).
    model = models.CharField(max_length=255, default="")
    provider = models.CharField(max_length=64, default="")
    status = models.PositiveSmallIntegerField()  # the HTTP status answered (499: client left)
    code = models.CharField(max_length=64, default="")  # the error object's code
    charged = models.BooleanField(default=False)
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "hour", *FAILURE_DIMS, "charged"],
                name="billing_failed_request_key",
            )
        ]
        indexes = [models.Index(fields=["organization", "hour"], name="billing_failed_org_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.status} {self.code} x{self.count}"


class RollupWatermark(models.Model):
    """The highest ``UsageRecord.id`` already added to the rollups (one row per stream)."""

    name = models.CharField(max_length=32, unique=True)
    last_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}@{self.last_id}"


class ReportKind(models.TextChoices):
    CSV = "csv", "CSV usage export"
    PDF = "pdf", "PDF spend report"
    STATEMENT = "statement", "Monthly statement (PDF)"


class ReportStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class Report(models.Model):
    """A report built by Celery: the status row the console polls (progress 0..100)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    # The subtree the report covers (the root: the whole organization).
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=ReportKind.choices)
    status = models.CharField(
        max_length=16, choices=ReportStatus.choices, default=ReportStatus.PENDING
    )
    progress = models.PositiveSmallIntegerField(default=0)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    filters = models.JSONField(default=dict, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    file_name = models.CharField(max_length=300, blank=True, default="")
    size_bytes = models.BigIntegerField(default=0)
    rows = models.BigIntegerField(default=0)
    pages = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["organization", "-id"], name="billing_report_org_id")]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "period_start"],
                condition=models.Q(kind="statement"),
                name="billing_report_one_statement_per_month",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} report {self.pk} ({self.status})"
