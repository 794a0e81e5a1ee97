"""Routing policies: one optional policy per node of an organization's tree (the organization's
root, a department, a team or a project). The key level is ``ApiKey.routing_policy`` (orgs) and
the request level the ``megarouter`` body object (gateway); ``routing.policies`` merges them.

Writes go through ``routing.policies`` services (each bumps ``RoutingPolicyVersion`` so every
process reloads its in-process policy table within about a second).
"""

from __future__ import annotations

from django.db import models

from orgs.models import Node, Organization
from routing.models import PRICE_FIELD


class Strategy(models.TextChoices):
    BALANCED = "balanced", "Balanced (cost, latency and quality)"
    COST = "cost", "Cost first"
    LATENCY = "latency", "Latency first"
    AVAILABILITY = "availability", "Availability first"


class RoutingPolicy(models.Model):
    """Every field is optional: blank / null means "inherit from the level above"."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="routing_policies"
    )
    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="routing_policy")
    strategy = models.CharField(max_length=16, choices=Strategy.choices, blank=True)
    allowed_models = models.JSONField(default=list, blank=True)  # ids or glob patterns
    blocked_models = models.JSONField(default=list, blank=True)
    allowed_providers = models.JSONField(default=list, blank=True)  # provider slugs
    blocked_providers = models.JSONField(default=list, blank=True)
    fallbacks = models.JSONField(default=list, blank=True)  # model ids, tried in order
    allowed_regions = models.JSONField(default=list, blank=True)
    max_price_per_million = models.DecimalField(**PRICE_FIELD, null=True, blank=True)
    max_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    zero_data_retention_only = models.BooleanField(null=True, blank=True)
    quality_floor = models.PositiveSmallIntegerField(null=True, blank=True)  # QualityTier 1..4
    reference_model = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization_id", "node_id"]

    def __str__(self) -> str:
        return f"policy@{self.node_id}"


class RoutingPolicyVersion(models.Model):
    """One row, bumped by every policy write (the in-process table reloads when it changes)."""

    version = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"policies v{self.version}"
