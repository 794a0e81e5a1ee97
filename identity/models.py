"""Single sign-on per organization (docs/identity.md).

An ``IdentityProvider`` belongs to one organization; ``protocol`` says how it speaks (OpenID
Connect today; SAML providers join as another protocol with fields of their own). Its email
domains (``SsoDomain``, unique across organizations) route the login page's email to it and
bound just-in-time accounts. ``ExternalIdentity`` ties the provider's subject (``sub``) to a
user, so a later login never depends on the email again. ``GroupMapping`` rows turn group claim
values into roles on nodes; ``SsoGrant`` marks the memberships a provider's mapping created,
which are the only ones a login adds or removes. ``SsoPolicy`` holds the organization-wide
choice of whether password login stays allowed for its members.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from orgs.models import Membership, Node, Organization, Role


class Protocol(models.TextChoices):
    OIDC = "oidc", "OpenID Connect"


class IdentityProvider(models.Model):
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="identity_providers"
    )
    name = models.CharField(max_length=100)
    protocol = models.CharField(max_length=16, choices=Protocol.choices, default=Protocol.OIDC)
    enabled = models.BooleanField(default=True)
    # OpenID Connect: the issuer's discovery document, the client registered there.
    discovery_url = models.URLField(max_length=500, blank=True, default="")
    client_id = models.CharField(max_length=255, blank=True, default="")
    # Fernet ciphertext (megarouter.crypto); never shown again once saved.
    client_secret_encrypted = models.TextField(blank=True, default="")
    scopes = models.CharField(max_length=200, default="openid email profile")
    # The ID token claim that lists the user's groups ("groups" for Okta, Entra ID, Keycloak).
    groups_claim = models.CharField(max_length=100, default="groups")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"], name="identity_provider_unique_name"
            )
        ]

    def __str__(self) -> str:
        return self.name


class SsoDomain(models.Model):
    """An email domain an organization declared for one of its providers. Unique across
    organizations: the login page sends an email of this domain to that provider."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    identity_provider = models.ForeignKey(
        IdentityProvider, on_delete=models.CASCADE, related_name="domains"
    )
    domain = models.CharField(max_length=253, unique=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain


class SsoPolicy(models.Model):
    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="sso_policy"
    )
    password_login_allowed = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"sso policy of {self.organization_id}"


class ExternalIdentity(models.Model):
    """The provider's subject for a user: how a returning user is recognized."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    identity_provider = models.ForeignKey(
        IdentityProvider, on_delete=models.CASCADE, related_name="identities"
    )
    subject = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="external_identities"
    )
    email = models.CharField(max_length=254, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["identity_provider", "subject"], name="identity_external_unique_subject"
            )
        ]

    def __str__(self) -> str:
        return f"{self.identity_provider_id}:{self.subject}"


class GroupMapping(models.Model):
    """Users whose ``groups_claim`` holds ``group`` get ``role`` on ``node`` (``*``: every
    user of the provider)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    identity_provider = models.ForeignKey(
        IdentityProvider, on_delete=models.CASCADE, related_name="mappings"
    )
    group = models.CharField(max_length=255)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=32, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["group", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["identity_provider", "group", "node"],
                name="identity_mapping_unique_group_node",
            )
        ]

    def __str__(self) -> str:
        return f"{self.group} -> {self.role}@{self.node_id}"


class SsoGrant(models.Model):
    """A membership created by a provider's group mapping (and so kept in step with it)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    identity_provider = models.ForeignKey(
        IdentityProvider, on_delete=models.CASCADE, related_name="grants"
    )
    membership = models.OneToOneField(Membership, on_delete=models.CASCADE, related_name="+")

    def __str__(self) -> str:
        return f"{self.identity_provider_id}:{self.membership_id}"
