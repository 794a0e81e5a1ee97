"""Routing policies: one optional policy per node of an organization's tree (the organization's
root, a department, a team or a project). The key level is ``ApiKey.routing_policy`` (orgs) and
the request level the ``megarouter`` body object (gateway); ``routing.policies`` merges them.

Writes go through ``routing.policies`` services (each bumps ``RoutingPolicyVersion`` so every
process reloads its in-process policy table within about a second).
"""

from __future__ import annotations

from django.db import models

from orgs.models import Node, Organization


class RoutingPolicy(models.Model):
    """A node's policy: a document of the fields ``orgs.policy.PolicySpec`` declares, only those
    set here (a field left out inherits from the level above). Written through
    ``routing.policies.routing_policy_set``, which validates it."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="routing_policies"
    )
    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="routing_policy")
    document = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization_id", "node_id"]

    def __str__(self) -> str:
        return f"policy@{self.node_id}"

    @property
    def strategy(self) -> str:
        """The strategy this node sets ("" when it inherits)."""
        return str(self.document.get("strategy", ""))


class RoutingPolicyVersion(models.Model):
    """One row, bumped by every policy write (the in-process table reloads when it changes)."""

    version = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"policies v{self.version}"
